defmodule Drove.BadPeerTest do
  # A peer that sends garbage, truncated or bit-flipped deltas, deltas naming dots the
  # receiver never issued, huge binaries, wrong protocol tuples or forged exit messages: the
  # message is logged and counted (info's :bad_messages), the state (contents, digest and
  # context of the replica) is unchanged, and the instance keeps serving. For a Drove.CRDT
  # and a Drove.Registry.Server on this node, and once across two real nodes.
  use ExUnit.Case, async: false

  import Bitwise
  import ExUnit.CaptureLog

  alias Drove.{CRDT, Handles, Native}
  alias Drove.Registry, as: R
  alias Drove.Test.Gen
  alias Drove.TestCluster, as: C

  @moduletag timeout: 180_000

  # ------------------------------------------------------------------ targets

  defp crdt_target do
    name = :"bad_peer_crdt_#{System.unique_integer([:positive])}"
    pid = start_supervised!({CRDT, name: name, on_diffs: fn _ -> :ok end})
    CRDT.merge(name, Map.new(1..100, &{{:k, &1}, &1}))

    %{
      kind: :crdt,
      pid: pid,
      bad: fn -> CRDT.info(name).bad_messages end,
      deltas_in: fn -> CRDT.info(name).deltas_in end,
      passive: fn -> CRDT.info(name).passive_peers end,
      handle: elem(Handles.lookup(name), 1),
      serves: fn ->
        CRDT.put(name, :probe, make_ref())
        assert CRDT.get(name, {:k, 50}) == 50
        assert is_reference(CRDT.get(name, :probe))
      end
    }
  end

  defp registry_target do
    name = :"bad_peer_reg_#{System.unique_integer([:positive])}"
    start_supervised!({R, name: name, keys: :unique})
    {:ok, _} = R.register(name, :me, :test)
    agent = start_supervised!({Agent, fn -> R.register(name, :agent, 1) end})

    %{
      kind: :registry,
      pid: Process.whereis(name),
      bad: fn -> R.info(name).bad_messages end,
      deltas_in: fn -> R.info(name).deltas_in end,
      passive: fn -> R.info(name).passive_peers end,
      handle: elem(Handles.lookup(name), 1),
      serves: fn ->
        me = self()
        assert R.lookup(name, :me) == [{me, :test}]
        assert R.lookup(name, :agent) == [{agent, 1}]
        key = {:probe, System.unique_integer()}
        assert {:ok, _} = R.register(name, key, 2)
        assert R.lookup(name, key) == [{me, 2}]
        :ok = R.unregister(name, key)
      end
    }
  end

  defp targets, do: [crdt_target(), registry_target()]

  # A process that registers key in the registry target and stays; {registry name, its pid}
  defp spawn_registrant(t, key, value) do
    {:registered_name, name} = Process.info(t.pid, :registered_name)
    test = self()

    registrant =
      spawn(fn ->
        {:ok, _} = R.register(name, key, value)
        send(test, {:registered, self()})
        Process.sleep(:infinity)
      end)

    assert_receive {:registered, ^registrant}, 5000
    {name, registrant}
  end

  # contents, digest and context of the replica
  defp state(t),
    do: {Native.digest(t.handle), Native.ctx(t.handle), Enum.sort(Native.to_list(t.handle))}

  # Real deltas of another replica (the NIF used directly), in chunks of at most 2 KiB.
  defp real_deltas(n) do
    owner = spawn_link(fn -> Process.sleep(:infinity) end)
    <<rid::64>> = :crypto.strong_rand_bytes(8)
    h = Native.replica_new(rid, owner, false)
    for i <- 1..n, do: :ok = Native.put(h, Native.key({:other, i}), Native.value({i, "v"}))
    :ok = Native.delete(h, Native.key({:other, 1}))
    {chunks, _} = Native.take_outbox(h, 2048)
    {h, chunks}
  end

  # Sends every message, then waits until the target counted `expected` more bad messages.
  # The info call that reads the counter is queued behind the messages.
  defp send_all(t, msgs, expected) do
    before = t.bad.()
    Enum.each(msgs, &send(t.pid, &1))
    C.wait_until(fn -> t.bad.() == before + expected end, 30_000)
  end

  defp assert_unchanged(t, before) do
    assert Process.alive?(t.pid)
    assert state(t) == before
    t.serves.()
  end

  # ------------------------------------------------------------------ tests

  test "garbage and wrong protocol tuples: counted, logged, nothing changes" do
    for t <- targets() do
      before = state(t)
      passive = t.passive.()
      ref = make_ref()
      ctx = Native.ctx(t.handle)
      digest = Native.digest(t.handle)

      fixed = [
        :garbage,
        "a binary",
        {:drove_delta, self(), "garbage"},
        {:drove_delta, self(), <<>>},
        {:drove_delta, self(), <<"DV", 1, 1>>},
        {:drove_delta, self(), <<"DV", 9, 1, 0::64, 0, 0>>},
        {:drove_delta, self(), 42},
        {:drove_delta, "not a pid", "x"},
        {:drove_delta, self(), "x", :extra},
        {:drove_delta},
        {:drove_sync_req, self(), ref, "x", "y"},
        {:drove_sync_req, self(), :not_a_ref, ctx, digest},
        {:drove_sync_req, self(), ref, digest, ctx},
        {:drove_sync_reply, self(), ref, "x", "y"},
        {:drove_sync_reply, self(), ref, ctx, digest},
        {:drove_sync_sum, self(), ref, "x"},
        {:drove_sync_sum, self(), ref, ctx},
        {:drove_sync_sum, self(), ref, Native.summary(t.handle) <> <<0>>},
        {:drove_sync_sum, self(), ref, binary_part(Native.summary(t.handle), 0, 19)},
        {:drove_sync_sum, self(), :not_a_ref, Native.summary(t.handle)},
        {:drove_sync_same, self()},
        {:drove_sync_diff, "not a pid", ref},
        {:drove_bye, "not a pid"},
        {:drove_bye, self(), :extra},
        # made-up exit messages naming a process of another node
        {:EXIT, Gen.foreign_pid(:"ghost@127.0.0.1", 1, 1), :boom},
        {:EXIT, Gen.foreign_pid(:"ghost@127.0.0.1", 2, 1), :kill}
      ]

      {random, _} = Gen.list_of(200, &Gen.term(&1, 4, 3), Gen.seed(Gen.exunit_seed()))
      # {:EXIT, local_pid, _} from a linked process is a real exit: not garbage
      random = Enum.reject(random, &match?({:EXIT, _, _}, &1))

      log = capture_log(fn -> send_all(t, fixed ++ random, length(fixed) + length(random)) end)

      assert log =~ "ignored a bad message", "#{t.kind}"
      assert log =~ "bad_magic"
      assert_unchanged(t, before)
      # garbage senders do not become peers the replica pushes its writes to
      assert t.passive.() == passive
    end
  end

  test "truncated and bit-flipped real deltas" do
    {_h, chunks} = real_deltas(300)

    for t <- targets() do
      before = state(t)

      truncated =
        for c <- chunks,
            n <- Enum.uniq([0, 1, 3, 4, 12, 13, div(byte_size(c), 2), byte_size(c) - 1]),
            do: {:drove_delta, self(), binary_part(c, 0, n)}

      # also with one byte of garbage after a whole message
      trailing = for c <- chunks, do: {:drove_delta, self(), c <> <<0>>}

      capture_log(fn ->
        send_all(t, truncated ++ trailing, length(truncated) + length(trailing))
      end)

      assert_unchanged(t, before)

      # bit flips: without a checksum some flips still decode to a valid delta (another
      # value, another key); each one is either counted as bad and changes nothing, or joined
      {results, _} =
        Enum.map_reduce(1..300, Gen.seed(Gen.exunit_seed()), fn _, st ->
          {c, st} = Gen.one_of(chunks, st)
          {bit, st} = Gen.int_in(0, bit_size(c) - 1, st)
          <<pre::bits-size(bit), b::1, post::bits>> = c
          flipped = <<pre::bits, 1 - b::1, post::bits>>

          s0 = state(t)
          {bad0, in0} = {t.bad.(), t.deltas_in.()}

          # (a registry also counts the joined entries that are not registrations)
          capture_log(fn ->
            send(t.pid, {:drove_delta, self(), flipped})
            C.wait_until(fn -> t.bad.() + t.deltas_in.() > bad0 + in0 end, 10_000)
          end)

          if t.deltas_in.() == in0 do
            assert t.bad.() == bad0 + 1
            assert state(t) == s0
            {:rejected, st}
          else
            {:joined, st}
          end
        end)

      assert Enum.count(results, &(&1 == :rejected)) > 50
      assert Process.alive?(t.pid)
      t.serves.()
    end
  end

  test "deltas naming dots of this replica it never issued are rejected" do
    for t <- targets() do
      before = state(t)
      rid = own_rid(t)

      # "I have seen your dots 1..2^40 and none survives": would wipe the map and advance
      # its context past dots it never made
      wipe =
        <<"DV", 1, 1, 99::little-64, 1, rid::little-64>> <> varint(1) <> varint(1 <<< 40) <> <<0>>

      # an element carrying one of our dots, beyond our counter
      k = Native.key(:forged)
      v = Native.value(:forged)

      forged_elem =
        <<"DV", 1, 1, 99::little-64, 1, rid::little-64>> <>
          varint(1 <<< 40) <>
          varint(0) <>
          <<1>> <>
          varint(byte_size(k)) <>
          k <>
          <<rid::little-64>> <>
          varint(1 <<< 40) <>
          varint(1) <>
          varint(byte_size(v)) <> v

      log =
        capture_log(fn ->
          send_all(t, [{:drove_delta, self(), wipe}, {:drove_delta, self(), forged_elem}], 2)
        end)

      assert log =~ "corrupt"
      assert_unchanged(t, before)
    end
  end

  test "a delta from a replica never seen before is a write like any other" do
    # there is no list of known replica ids: a new node's first writes are such deltas.
    {_h, chunks} = real_deltas(50)

    for t <- targets() do
      in0 = t.deltas_in.()

      capture_log(fn ->
        Enum.each(chunks, &send(t.pid, {:drove_delta, self(), &1}))
        C.wait_until(fn -> t.deltas_in.() == in0 + length(chunks) end, 10_000)
      end)

      # a registry stores them in its replica but ignores, and counts, entries that are not
      # registrations, members or meta (49: the removed key was never seen, so no diff)
      assert t.bad.() == if(t.kind == :crdt, do: 0, else: 49)
      map = Map.new(Native.to_list(t.handle))
      assert map[{:other, 50}] == {50, "v"}
      refute Map.has_key?(map, {:other, 1})
      t.serves.()
    end
  end

  test "huge binaries: tens of MiB are decoded and rejected, more than a peer may send is refused" do
    big = :binary.copy(<<0>>, 40 <<< 20)
    {_h, [chunk | _]} = real_deltas(10)
    # a real delta followed by 40 MiB of trailing zeros, and 40 MiB of garbage
    msgs = [
      {:drove_delta, self(), big},
      {:drove_delta, self(), chunk <> big},
      {:drove_sync_req, self(), make_ref(), big, big}
    ]

    for t <- targets() do
      before = state(t)
      log = capture_log(fn -> send_all(t, msgs, length(msgs)) end)
      assert log =~ "ignored a bad message"
      assert_unchanged(t, before)
    end
  end

  @tag :huge
  test "a delta larger than DV_MAX_MESSAGE (256 MiB) is counted, not a crash" do
    # the NIF refuses such a binary with badarg; the replicator must not call it
    huge = :binary.copy(<<0>>, (256 <<< 20) + 1)

    for t <- targets() do
      before = state(t)
      log = capture_log(fn -> send_all(t, [{:drove_delta, self(), huge}], 1) end)
      assert log =~ "too_big"
      assert_unchanged(t, before)
    end
  end

  test "exit messages naming a live registrant or a bystander are ignored, not counted" do
    t = registry_target()
    {name, registrant} = spawn_registrant(t, :victim, 1)
    # what a process calling Process.exit(registry, reason) makes the registry receive
    bystander = spawn(fn -> Process.sleep(:infinity) end)
    before = state(t)
    bad = t.bad.()

    Enum.each([{:EXIT, registrant, :forged}, {:EXIT, bystander, :normal}], &send(t.pid, &1))

    # t.bad is a call: every message sent before it has been handled
    assert t.bad.() == bad
    assert R.lookup(name, :victim) == [{registrant, 1}]
    assert state(t) == before

    # the registrant is still watched: its real exit is noticed
    Process.exit(registrant, :kill)
    C.wait_until(fn -> R.lookup(name, :victim) == [] end, 10_000)
    C.wait_until(fn -> not Map.has_key?(Map.new(Native.to_list(t.handle)), {:key, :victim}) end)
    C.wait_until(fn -> :ets.lookup(R.keys_table(name), :victim) == [] end)
    t.serves.()
  end

  @tag :cluster
  test "two real nodes: a bad peer does not disturb replication between good ones" do
    [a, b] = C.start_nodes(2)
    name = :bad_peer_pair

    for {n, m} <- [{a, b}, {b, a}] do
      {:ok, _} = C.rpc(n, Drove.Test.CRDTPeer, :start, [name, [{name, m}]])
    end

    C.rpc(a, Drove.Test.CRDTPeer, :put_range, [name, :a, 1..500])
    C.wait_until(fn -> C.rpc(b, Drove.Test.CRDTPeer, :size, [name]) == 500 end, 20_000)

    # garbage from this node (a third party) to b, interleaved with a's writes
    {_h, chunks} = real_deltas(100)
    b_pid = C.rpc(b, Process, :whereis, [name])

    garbage =
      for(c <- chunks, do: {:drove_delta, self(), binary_part(c, 0, byte_size(c) - 1)}) ++
        [{:drove_delta, self(), "garbage"}, {:drove_sync_req, self(), make_ref(), "x", "y"}]

    Enum.each(garbage, &send(b_pid, &1))
    C.rpc(a, Drove.Test.CRDTPeer, :put_range, [name, :a2, 1..500])

    C.wait_until(
      fn -> C.rpc(b, Drove.CRDT, :info, [name]).bad_messages == length(garbage) end,
      20_000
    )

    C.wait_until(fn -> C.rpc(b, Drove.Test.CRDTPeer, :size, [name]) == 1000 end, 20_000)

    C.wait_until(
      fn ->
        C.rpc(a, Drove.Test.CRDTPeer, :digest, [name]) ==
          C.rpc(b, Drove.Test.CRDTPeer, :digest, [name])
      end,
      20_000
    )

    assert C.rpc(a, Drove.CRDT, :info, [name]).bad_messages == 0
    # the third party (this node) never became one of b's peers
    assert Enum.all?(C.rpc(b, Drove.CRDT, :info, [name]).passive_peers, &(node(&1) == a))
  end

  defp own_rid(t), do: Native.info(t.handle).replica_id

  defp varint(n) when n < 128, do: <<n>>
  defp varint(n), do: <<1::1, n &&& 127::7>> <> varint(n >>> 7)
end
