defmodule Drove.CRDTTest do
  use ExUnit.Case, async: true

  alias Drove.CRDT

  defp start(opts \\ []) do
    parent = self()
    tag = make_ref()
    on_diffs = fn diffs -> send(parent, {tag, diffs}) end
    pid = start_supervised!({CRDT, [on_diffs: on_diffs] ++ opts}, id: make_ref())
    {pid, tag}
  end

  # The diffs reported, in order, up to and including `last` (the owner reports them in the
  # order of the writes).
  defp diffs_until(tag, last, acc \\ []) do
    receive do
      {^tag, d} ->
        acc = acc ++ d
        if last in acc, do: acc, else: diffs_until(tag, last, acc)
    after
      5000 -> flunk("no diff #{inspect(last)} in 5 s; got #{inspect(acc)}")
    end
  end

  test "a local write is read back at once, by any process" do
    {c, _} = start()
    assert CRDT.put(c, :k, %{deep: [1, 2, {3}]}) == c
    assert CRDT.get(c, :k) == %{deep: [1, 2, {3}]}
    assert Task.async(fn -> CRDT.get(c, :k) end) |> Task.await() == %{deep: [1, 2, {3}]}
    CRDT.delete(c, :k)
    assert CRDT.get(c, :k) == nil
    assert CRDT.fetch(c, :k) == :error
  end

  test "equal terms are one key; merge, drop, take, to_map" do
    {c, _} = start()
    CRDT.merge(c, %{%{b: 2, a: 1} => 1, "x" => 2, 3 => 3})
    assert CRDT.get(c, %{a: 1, b: 2}) == 1
    CRDT.put(c, :n, nil)
    assert CRDT.fetch(c, :n) == {:ok, nil}
    assert CRDT.take(c, ["x", 3, :missing]) == %{"x" => 2, 3 => 3}
    CRDT.drop(c, ["x", 3])
    assert CRDT.to_map(c) == %{%{a: 1, b: 2} => 1, :n => nil}
    assert CRDT.info(c).size == 2
  end

  test "on_diffs reports adds and removes of local writes, not equal re-puts" do
    {c, tag} = start()
    CRDT.put(c, :a, 1)
    assert diffs_until(tag, {:add, :a, 1}) == [{:add, :a, 1}]
    # an equal re-put reports nothing: the diffs up to a later marker write hold only it
    CRDT.put(c, :a, 1)
    CRDT.put(c, :mark, 1)
    assert diffs_until(tag, {:add, :mark, 1}) == [{:add, :mark, 1}]
    CRDT.put(c, :a, 2)
    CRDT.delete(c, :a)
    CRDT.delete(c, :never_there)
    CRDT.put(c, :mark, 2)
    d = diffs_until(tag, {:add, :mark, 2})
    # :a ends removed (its put of 2 may or may not show first, by when the owner flushed);
    # a delete of a key never there reports nothing
    assert List.last(for x <- d, elem(x, 1) == :a, do: x) == {:remove, :a}
    refute Enum.any?(d, &(elem(&1, 1) == :never_there))
  end

  test "two replicas on one node converge both ways, deletes included" do
    {a, ta} = start()
    {b, tb} = start()
    CRDT.set_neighbours(a, [b])
    CRDT.put(a, :from_a, 1)
    CRDT.put(b, :from_b, 2)
    wait(fn -> CRDT.to_map(a) == CRDT.to_map(b) and map_size(CRDT.to_map(a)) == 2 end)
    assert {:add, :from_b, 2} in diffs_until(ta, {:add, :from_b, 2})
    assert {:add, :from_a, 1} in diffs_until(tb, {:add, :from_a, 1})
    CRDT.delete(b, :from_a)
    wait(fn -> CRDT.get(a, :from_a) == nil end)
    assert {:remove, :from_a} in diffs_until(ta, {:remove, :from_a})
  end

  # Small deltas (the eager pushes) are decoded once, under the lock, both to validate them
  # and to report the diffs (join_small in drove_nif.c).
  test "a small delta is refused whole when one of its terms is bad; else its diffs are exact" do
    alias Drove.Native
    a = Native.replica_new(1, self(), false)
    b = Native.replica_new(2, self(), false)
    :ok = Native.put(a, Native.key(:k1), Native.value({self(), 1}))
    :ok = Native.put(a, Native.key({:k, 2}), Native.value(%{v: 2}))
    :ok = Native.put(a, Native.key("k3"), Native.value(:v3))
    {[chunk], _} = Native.take_outbox(a, 1_048_576)
    {pos, _} = :binary.match(chunk, Native.value(:v3))
    # the version byte of the third value: the message still decodes, the term does not
    bad =
      binary_part(chunk, 0, pos) <>
        <<130>> <> binary_part(chunk, pos + 1, byte_size(chunk) - pos - 1)

    assert Native.join(b, bad, true) == {:error, :bad_term}
    assert Native.to_list(b) == []
    assert {:ok, diffs, 3} = Native.join(b, chunk, true)

    assert Enum.sort(diffs) ==
             Enum.sort([{:add, :k1, {self(), 1}}, {:add, {:k, 2}, %{v: 2}}, {:add, "k3", :v3}])

    # a later delta: a remove and an overwrite, reported from the map and from the delta
    :ok = Native.delete(a, Native.key(:k1))
    :ok = Native.put(a, Native.key("k3"), Native.value(:v4))
    {[chunk2], _} = Native.take_outbox(a, 1_048_576)
    assert {:ok, diffs2, 1} = Native.join(b, chunk2, true)
    assert Enum.sort(diffs2) == Enum.sort([{:remove, :k1}, {:add, "k3", :v4}])
  end

  # The supervisor's child node answers a start with the entry's write as a delta of its own
  # (put_new_delta), which the caller's node joins before the node's regular push arrives.
  test "put_new_delta: the write alone as a delta a peer joins, and in the write log too" do
    alias Drove.Native
    a = Native.replica_new(1, self(), false)
    b = Native.replica_new(2, self(), false)
    c = Native.replica_new(3, self(), false)
    :ok = Native.put(a, Native.key(:before), Native.value(1))
    assert {:ok, delta} = Native.put_new_delta(a, Native.key(:child), Native.value({:v, 2}))
    assert Native.get(a, Native.key(:child)) == {:ok, {:v, 2}}

    # alone: b gets the entry and nothing else of a's
    assert {:ok, [{:add, :child, {:v, 2}}], 1} = Native.join(b, delta, true)
    assert Native.to_list(b) == [{:child, {:v, 2}}]

    # the write log still has both writes: the regular push brings c to a's state, and to b
    # it brings only what b had not seen
    {[chunk], _} = Native.take_outbox(a, 1_048_576)
    assert {:ok, _, _} = Native.join(c, chunk, true)
    assert Enum.sort(Native.to_list(c)) == [{:before, 1}, {:child, {:v, 2}}]
    assert {:ok, [{:add, :before, 1}], _} = Native.join(b, chunk, true)

    # a key that has an element is not written, and no delta is made
    assert Native.put_new_delta(a, Native.key(:child), Native.value(:other)) == {:exists, {:v, 2}}
    assert Native.get(a, Native.key(:child)) == {:ok, {:v, 2}}
    assert {[], []} = Native.take_outbox(a, 1_048_576)

    # a later remove on a wins over a late join of the old delta on a peer (its dot is seen)
    :ok = Native.delete(a, Native.key(:child))
    {[rm], _} = Native.take_outbox(a, 1_048_576)
    assert {:ok, [{:remove, :child}], _} = Native.join(c, rm, true)
    assert {:ok, [], _} = Native.join(c, delta, true)
    assert Native.get(c, Native.key(:child)) == :error
  end

  test "a summary tells equal replicas from different ones" do
    alias Drove.Native
    owner = spawn_link(fn -> Process.sleep(:infinity) end)
    ha = Native.replica_new(1, owner, false)
    hb = Native.replica_new(2, owner, false)
    assert Native.summary_match(hb, Native.summary(ha))
    for i <- 1..50, do: :ok = Native.put(ha, Native.key(i), Native.value(i))
    refute Native.summary_match(hb, Native.summary(ha))
    # b joins all of a's writes: the same context and live dots
    {chunks, _} = Native.take_outbox(ha, 1_048_576)
    for c <- chunks, do: assert({:ok, _, _} = Native.join(hb, c, false))
    assert Native.summary_match(hb, Native.summary(ha))
    assert Native.summary_match(ha, Native.summary(hb))
    # a write on either side makes them differ again
    :ok = Native.delete(hb, Native.key(1))
    refute Native.summary_match(ha, Native.summary(hb))
  end

  test "wrong argument types raise ArgumentError" do
    assert_raise ArgumentError, fn -> Drove.Native.put(make_ref(), "k", "v") end
    assert_raise ArgumentError, fn -> Drove.Native.get(:not_a_handle, "k") end
    assert_raise ArgumentError, fn -> CRDT.start_link(sync_interval: 0) end
    assert_raise ArgumentError, fn -> CRDT.start_link(on_diffs: :nope) end
    assert_raise ArgumentError, fn -> CRDT.start_link(bogus: 1) end
    {c, _} = start()
    {_, h} = Drove.Handles.lookup(c)
    assert_raise ArgumentError, fn -> Drove.Native.put(h, :not_binary, "v") end
    assert_raise ArgumentError, fn -> Drove.Native.join(h, "x", :maybe) end
    assert_raise ArgumentError, fn -> Drove.Native.take_outbox(h, 0) end
    assert_raise ArgumentError, fn -> Drove.Native.sync_reply(h, "a", "b", -1, 1) end
    assert CRDT.put(c, :still, :serving) == c
  end

  test "bad peer messages return errors, are counted, and change nothing" do
    {c, _} = start()
    CRDT.merge(c, %{1 => 1, 2 => 2})
    {_, h} = Drove.Handles.lookup(c)
    before = {Drove.Native.digest(h), Drove.Native.ctx(h)}
    assert {:error, :bad_magic} = Drove.Native.join(h, "garbage!", false)
    assert {:error, _} = Drove.Native.join(h, <<"DV", 1, 1, 0::64, 1, 0>>, false)
    assert {:error, _} = Drove.Native.sync_reply(h, "junk", "junk", 1024, 10)
    assert {:error, _} = Drove.Native.sync_finish(h, Drove.Native.ctx(h), "junk", 1024, false)
    sum = Drove.Native.summary(h)
    assert Drove.Native.summary_match(h, sum) == true
    assert {:error, :truncated} = Drove.Native.summary_match(h, binary_part(sum, 0, 19))
    assert {:error, :corrupt} = Drove.Native.summary_match(h, sum <> <<0>>)
    assert {:error, :wrong_type} = Drove.Native.summary_match(h, Drove.Native.ctx(h))
    assert_raise ArgumentError, fn -> Drove.Native.summary_match(h, :not_binary) end
    # a well-formed delta whose value is not an external term
    bad = <<"DV", 1, 1, 7::little-64, 0, 1, 1, 131, 1::little-64, 1, 1, 1, 0>>
    assert {:error, _} = Drove.Native.join(h, bad, false)

    ExUnit.CaptureLog.capture_log(fn ->
      send(c, {:drove_delta, self(), "garbage"})
      send(c, {:drove_sync_req, self(), make_ref(), "x", "y"})
      send(c, :unexpected)
      wait(fn -> CRDT.info(c).bad_messages == 3 end)
    end)

    assert {Drove.Native.digest(h), Drove.Native.ctx(h)} == before
    assert CRDT.to_map(c) == %{1 => 1, 2 => 2}
  end

  # 30 s: a bound for a loaded machine, not a speed asked for
  defp wait(fun, ms \\ 30_000) do
    deadline = System.monotonic_time(:millisecond) + ms
    do_wait(fun, deadline)
  end

  defp do_wait(fun, deadline) do
    cond do
      fun.() -> :ok
      System.monotonic_time(:millisecond) > deadline -> flunk("condition not met in time")
      true -> Process.sleep(5) && do_wait(fun, deadline)
    end
  end
end
