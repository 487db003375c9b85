defmodule Drove.RegistryTest do
  use ExUnit.Case, async: true

  alias Drove.Native
  alias Drove.Registry, as: R
  alias Drove.Test.Named
  alias Drove.TestCluster, as: C

  setup do
    name = :"reg_#{System.unique_integer([:positive])}"
    start_supervised!({R, name: name, keys: :unique, listeners: [], meta: [color: :blue]})
    %{reg: name}
  end

  test "via registration, lookup, whereis and send", %{reg: reg} do
    {:ok, pid} = Named.start(reg, :a)
    assert R.lookup(reg, :a) == [{pid, nil}]
    assert R.lookup({:via, R, {reg, :a}}) == [{pid, nil}]
    assert GenServer.call({:via, R, {reg, :a}}, :ping) == {:pong, node()}
    assert R.whereis_name({reg, :missing}) == :undefined
    assert_raise ArgumentError, fn -> R.send({reg, :missing}, :hi) end
    # a name held by a live process: :no, so the second start gets already_started
    assert {:error, {:already_started, ^pid}} = Named.start(reg, :a)
  end

  test "register is read back at once; already_registered; keys", %{reg: reg} do
    assert {:ok, _} = R.register(reg, :k1, :v1)
    assert R.lookup(reg, :k1) == [{self(), :v1}]
    assert {:ok, _} = R.register(reg, :k2, :v2)
    assert Enum.sort(R.keys(reg, self())) == [:k1, :k2]
    assert {:error, {:already_registered, me}} = R.register(reg, :k1, :other)
    assert me == self()

    task = Task.async(fn -> R.register(reg, :k1, :x) end)
    assert {:error, {:already_registered, ^me}} = Task.await(task)
    assert R.count(reg) == 2
  end

  test "unregister removes only the caller's own registration", %{reg: reg} do
    {:ok, _} = R.register(reg, :mine, 1)
    Task.async(fn -> R.unregister(reg, :mine) end) |> Task.await()
    assert R.lookup(reg, :mine) == [{self(), 1}]
    assert R.unregister(reg, :mine) == :ok
    assert R.lookup(reg, :mine) == []
    assert R.keys(reg, self()) == []
  end

  test "entries go when their process exits; listeners are told", %{reg: reg} do
    listener = :"listener_#{System.unique_integer([:positive])}"
    Process.register(self(), listener)
    stop_supervised!(R)
    start_supervised!({R, name: reg, keys: :unique, listeners: [listener]})
    {:ok, pid} = Named.start(reg, :temp)
    assert_receive {:register, ^reg, :temp, ^pid, nil}
    Process.exit(pid, :kill)
    assert_receive {:unregister, ^reg, :temp, ^pid}
    assert R.lookup(reg, :temp) == []
    assert R.count(reg) == 0
  end

  test "a killed registry process takes its registrants with it, as a link would", %{reg: reg} do
    test = self()
    {:ok, plain} = Task.start(fn -> {:ok, _} = R.register(reg, :plain, 1) && wait_stop() end)

    {:ok, trapping} =
      Task.start(fn ->
        Process.flag(:trap_exit, true)
        {:ok, _} = R.register(reg, :trapping, 2)
        send(test, :registered)
        receive do: ({:EXIT, _from, reason} -> send(test, {:trapped, reason}))
      end)

    assert_receive :registered
    refs = for p <- [plain, trapping], do: Process.monitor(p)
    wait_until(fn -> R.count(reg) == 2 end)
    old = Process.whereis(reg)
    Process.exit(old, :kill)

    [plain_ref, trapping_ref] = refs
    assert_receive {:DOWN, ^plain_ref, :process, ^plain, :killed}
    assert_receive {:trapped, :killed}
    assert_receive {:DOWN, ^trapping_ref, :process, ^trapping, :normal}
    # restarted by its supervisor, without them
    wait_until(fn -> (p = Process.whereis(reg)) != nil and p != old end)
    assert R.lookup(reg, :plain) == [] and R.lookup(reg, :trapping) == []
  end

  test "register_name of a process that is gone or of another node answers :no", %{reg: reg} do
    {dead, ref} = spawn_monitor(fn -> :ok end)
    assert_receive {:DOWN, ^ref, :process, ^dead, :normal}
    assert R.register_name({reg, :dead}, dead) == :no

    assert R.register_name({reg, :remote}, Drove.Test.Gen.foreign_pid(:"x@127.0.0.1", 1, 1)) ==
             :no

    assert R.count(reg) == 0

    # another live local process: registered, and watched like one registering itself
    other = spawn(&wait_stop/0)
    assert R.register_name({reg, :other}, other) == :yes
    assert R.lookup(reg, :other) == [{other, nil}]
    send(other, :stop)
    wait_until(fn -> R.lookup(reg, :other) == [] and R.count(reg) == 0 end)
  end

  test "exits that find the replica locked are queued, and still drop their registrations",
       %{reg: reg} do
    pids =
      for i <- 1..200 do
        spawn(fn -> {:ok, _} = R.register(reg, {:busy, i}, nil) && wait_stop() end)
      end

    wait_until(fn -> R.count(reg) == 200 end)

    # every exit finds the lock held (Native.test_hold/2) and is queued, not blocked on
    with_lock_held(reg, fn h ->
      {deferred, _} = Native.test_counters(h)
      Enum.each(pids, &Process.exit(&1, :kill))
      wait_until(fn -> elem(Native.test_counters(h), 0) == deferred + 200 end)
    end)

    # every registration goes once the lock is free
    wait_until(fn -> R.count(reg) == 0 end)
    assert Enum.all?(1..200, &(R.lookup(reg, {:busy, &1}) == []))
    {_, h} = Drove.Handles.lookup(reg)
    assert for({{:key, k}, _} <- Native.to_list(h), do: k) == []
    assert R.info(reg).exits_deferred >= 200
  end

  test "registrations that find the replica locked yield, then go dirty, and all succeed",
       %{reg: reg} do
    test = self()

    pids =
      with_lock_held(reg, fn h ->
        {_, busy} = Native.test_counters(h)

        pids =
          for i <- 1..100 do
            spawn(fn ->
              send(test, {:reg, self(), R.register(reg, {:locked, i}, i)})
              wait_stop()
            end)
          end

        # each spun, yielded, and was rescheduled dirty, where it waits for the lock
        wait_until(fn -> elem(Native.test_counters(h), 1) == busy + 100 end)
        refute_received {:reg, _, _}
        pids
      end)

    for {pid, i} <- Enum.with_index(pids, 1) do
      assert_receive {:reg, ^pid, {:ok, _}}, 10_000
      assert R.lookup(reg, {:locked, i}) == [{pid, i}]
    end

    Enum.each(pids, &Process.exit(&1, :kill))
    wait_until(fn -> R.count(reg) == 0 end)
  end

  test "concurrent registrations: one winner per key, one monitor per registrant", %{reg: reg} do
    test = self()

    pids =
      for p <- 1..40 do
        spawn(fn ->
          receive do: (:go -> :ok)
          # half of them hold a key of their own; all contend for 30 shared ones (yielding
          # between registrations interleaves them)
          own = if p <= 20, do: [R.register(reg, {:own, p}, p)], else: []

          won =
            for k <- Enum.shuffle(1..30),
                :erlang.yield(),
                match?({:ok, _}, R.register(reg, {:k, k}, p)),
                do: k

          # some give their keys back (still watched: their exit must be seen) and register
          # again, which must not watch them twice
          again =
            if rem(p, 3) == 0 and won != [] do
              Enum.each(won, &R.unregister(reg, {:k, &1}))
              {:ok, _} = R.register(reg, {:again, p}, p)
            end

          send(test, {:done, self(), won != [] or own != [] or again != nil})
          wait_stop()
        end)
      end

    Enum.each(pids, &send(&1, :go))
    registered = Map.new(pids, &(assert_receive({:done, ^&1, any}, 10_000) && {&1, any}))
    assert Enum.count(registered, &elem(&1, 1)) > 1

    for pid <- pids do
      {:monitored_by, by} = Process.info(pid, :monitored_by)
      # the replica's monitor shows as a reference; only processes that registered have one
      assert Enum.count(by, &is_reference/1) == if(registered[pid], do: 1, else: 0)
    end

    for k <- 1..30 do
      case R.lookup(reg, {:k, k}) do
        [{pid, p}] -> assert pid in pids and rem(p, 3) != 0
        [] -> :ok
      end
    end

    Enum.each(pids, &Process.exit(&1, :kill))
    wait_until(fn -> R.count(reg) == 0 end)
  end

  # The registry's replica, made big enough that to_list/1 (a dirty job) holds its lock for
  # milliseconds.
  # Runs fun.(handle) while a test hook holds the registry's replica lock; its result.
  defp with_lock_held(reg, fun) do
    {_server, h} = Drove.Handles.lookup(reg)
    test = self()
    holder = Task.async(fn -> Native.test_hold(h, test) end)
    assert_receive :drove_test_held, 5000

    try do
      fun.(h)
    after
      :ok = Native.test_release()
      :ok = Task.await(holder, 10_000)
    end
  end

  defp wait_stop, do: receive(do: (:stop -> :ok))

  # polls f until it holds; 30 s is a bound for a loaded machine, not a speed asked for
  defp wait_until(f), do: C.wait_until(f, 30_000)

  test "select, match, count_match, dispatch, update_value", %{reg: reg} do
    {:ok, _} = R.register(reg, {:agent, 1}, %{n: 1})
    {:ok, _} = R.register(reg, {:agent, 2}, %{n: 2})
    {:ok, _} = R.register(reg, :other, nil)
    me = self()

    assert Enum.sort(R.select(reg, [{{{:agent, :"$1"}, :_, :_}, [], [:"$1"]}])) == [1, 2]

    assert R.select(reg, [{{:"$1", :"$2", :"$3"}, [{:==, :"$1", :other}], [{{:"$1", :"$2"}}]}]) ==
             [{:other, me}]

    assert_raise ArgumentError, fn -> R.select(reg, [{{:bad}, [], [true]}]) end
    assert R.match(reg, {:agent, 2}, %{n: :"$1"}, [{:>, :"$1", 1}]) == [{me, %{n: 2}}]
    assert R.match(reg, {:agent, 1}, %{n: 5}) == []
    assert R.count_match(reg, {:agent, 1}, %{n: :_}) == 1
    assert R.dispatch(reg, :other, fn entries -> send(me, {:dispatched, entries}) end) == :ok
    assert_receive {:dispatched, [{^me, nil}]}
    assert R.update_value(reg, {:agent, 1}, &Map.put(&1, :x, 1)) == {%{n: 1, x: 1}, %{n: 1}}
    assert R.lookup(reg, {:agent, 1}) == [{me, %{n: 1, x: 1}}]
    assert Task.async(fn -> R.update_value(reg, {:agent, 1}, & &1) end) |> Task.await() == :error
  end

  test "meta", %{reg: reg} do
    assert R.meta(reg, :color) == {:ok, :blue}
    assert R.meta(reg, :size) == :error
    assert R.put_meta(reg, :size, 3) == :ok
    assert R.meta(reg, :size) == {:ok, 3}
    assert R.delete_meta(reg, :size) == :ok
    assert R.meta(reg, :size) == :error
  end

  test "the tables exist exactly while the registry runs", %{reg: reg} do
    assert :ets.whereis(:"keys_#{reg}") != :undefined
    assert Process.whereis(reg) != nil
    stop_supervised!(R)
    assert :ets.whereis(:"keys_#{reg}") == :undefined
    assert_raise ArgumentError, fn -> R.lookup(reg, :x) end
    assert_raise ArgumentError, fn -> R.count(reg) end
    assert_raise ArgumentError, fn -> GenServer.whereis({:via, R, {reg, :x}}) end
  end

  test "module-based registries and invalid options" do
    defmodule ModReg do
      use Drove.Registry
      def init(arg), do: {:ok, [keys: :unique] ++ arg}
    end

    name = :"modreg_#{System.unique_integer([:positive])}"
    assert %{type: :supervisor} = ModReg.child_spec([])
    {:ok, sup} = R.start_link(ModReg, [], name: name)
    {:ok, pid} = Named.start(name, :x)
    assert R.lookup(name, :x) == [{pid, nil}]
    ref = Process.monitor(pid)
    Process.unlink(sup)
    Supervisor.stop(sup)
    # registrants are linked to the registry, as in Horde: they go with it
    assert_receive {:DOWN, ^ref, :process, ^pid, :shutdown}

    assert_raise ArgumentError, ~r/keys: :unique/, fn ->
      R.start_link(name: :r1, keys: :duplicate)
    end

    assert_raise ArgumentError, ~r/:name/, fn -> R.start_link(keys: :unique) end
    assert_raise ArgumentError, fn -> R.start_link(name: :r2, keys: :unique, members: 7) end
    assert_raise ArgumentError, fn -> R.start_link(name: :r3, keys: :unique, bogus: 1) end
  end

  test "Drove.Cluster-style membership calls", %{reg: reg} do
    assert GenServer.call(reg, :members) == [{reg, node()}]
    assert GenServer.call(reg, {:set_members, [reg, {reg, :"other@127.0.0.1"}]}) == :ok
    assert GenServer.call(reg, :members) == Enum.sort([{reg, node()}, {reg, :"other@127.0.0.1"}])
  end

  # The replica's pid -> keys index (c_src/owners.h) checks what it finds against the
  # canonical external format of the pid, re-encoded in C from enif_term_to_binary, whose
  # node atoms may be Latin-1: pids of nodes named in ASCII and in Latin-1, short and long.
  test "the pid index finds the keys of pids of any node name" do
    h = Native.replica_new(1, self(), false)

    names = [
      "a@b",
      "n\xF6de@h\xF4st",
      String.duplicate("x", 200) <> "@h",
      String.duplicate("\xE9", 200) <> "@h"
    ]

    # ATOM_EXT: the node name as Latin-1 bytes
    remote =
      for name <- names,
          do:
            :erlang.binary_to_term(
              <<131, 88, 100, byte_size(name)::16>> <> name <> <<5::32, 0::32, 7::32>>
            )

    pids = [self() | remote]

    for {pid, i} <- Enum.with_index(pids) do
      assert Native.register(h, Native.key({:key, i}), Native.value({pid, i}), pid) == :ok
      assert Native.register(h, Native.key({:key, {i, 2}}), Native.value({pid, i}), pid) == :ok
    end

    for {pid, i} <- Enum.with_index(pids) do
      assert Enum.sort(Native.owned_keys(h, pid)) == Enum.sort([{:key, i}, {:key, {i, 2}}])
      assert Native.owns(h, pid)
    end

    assert length(Native.drop_owned(h, pids)) == 2 * length(pids)
    assert Native.to_list(h) == []
    for pid <- pids, do: refute(Native.owns(h, pid))
  end
end
