defmodule Drove.MemoryTest do
  # Memory that follows the load (issue 20): after a burst, a replica gives its memory back.
  # `info(...).memory` is what the replica holds in C (tables, slab, context, owners index);
  # it depends only on the operations applied, so an upper bound is asserted, no timing.
  use ExUnit.Case, async: false

  import Drove.TestCluster, only: [wait_until: 2]

  alias Drove.CRDT
  alias Drove.DynamicSupervisor, as: DS
  alias Drove.Registry, as: R

  @moduletag timeout: 300_000

  @small 1_000_000

  defp reg_memory(reg), do: R.info(reg).memory

  # n processes register one name each and wait; returns their pids
  defp register_burst(reg, n, tag) do
    parent = self()

    pids =
      for i <- 1..n do
        spawn(fn ->
          {:ok, _} = R.register(reg, {tag, i}, i)
          send(parent, {:registered, self()})
          receive do: (:stop -> :ok)
        end)
      end

    for pid <- pids, do: assert_receive({:registered, ^pid}, 30_000)
    pids
  end

  defp stop_all(pids) do
    refs = Enum.map(pids, &Process.monitor/1)
    Enum.each(pids, &send(&1, :stop))
    for ref <- refs, do: assert_receive({:DOWN, ^ref, :process, _, _}, 30_000)
  end

  test "a registry returns to a small replica after a burst of processes exits, twice" do
    reg = :"mem_reg_#{System.unique_integer([:positive])}"
    start_supervised!({R, name: reg, keys: :unique, members: :auto})
    base = R.info(reg).size
    n = 40_000

    for round <- 1..2 do
      pids = register_burst(reg, n, round)
      assert R.count(reg) == n
      peak = reg_memory(reg)
      # the burst is big enough for the bound below to mean something
      assert peak > 6 * @small, "round #{round}: peak #{peak} B"
      some = Enum.at(pids, 123)
      assert R.lookup(reg, {round, 124}) == [{some, 124}]

      stop_all(pids)
      # exits are dropped by the exiting processes themselves (or soon after by the registry)
      wait_until(fn -> R.count(reg) == 0 and R.info(reg).size == base end, 60_000)
      after_ = reg_memory(reg)
      assert after_ <= @small, "round #{round}: #{after_} B after all exited (peak #{peak} B)"
      assert R.lookup(reg, {round, 124}) == []
    end
  end

  test "a CRDT gives back memory when its keys are deleted, and grows again" do
    name = :"mem_crdt_#{System.unique_integer([:positive])}"
    start_supervised!({CRDT, name: name})
    n = 100_000

    for round <- 1..2 do
      for i <- 1..n, do: CRDT.put(name, {:k, i}, {round, i})
      peak = CRDT.info(name).memory
      assert peak > 10 * @small, "round #{round}: peak #{peak} B"

      # down to 1%: the survivors still read right, in a small replica
      for i <- 1..n, rem(i, 100) != 0, do: CRDT.delete(name, {:k, i})
      assert CRDT.info(name).size == div(n, 100)
      mid = CRDT.info(name).memory
      assert mid <= @small, "round #{round}: #{mid} B with 1% of the keys left"
      for i <- 100..n//100, do: assert(CRDT.get(name, {:k, i}) == {round, i})
      assert CRDT.get(name, {:k, 1}) == nil

      for i <- 100..n//100, do: CRDT.delete(name, {:k, i})
      assert CRDT.info(name).size == 0
      after_ = CRDT.info(name).memory
      assert after_ <= @small, "round #{round}: #{after_} B when empty"
    end
  end

  test "a distributed supervisor's replica shrinks back after its children go" do
    name = :"mem_sup_#{System.unique_integer([:positive])}"
    start_supervised!({DS, name: name, strategy: :one_for_one, members: :auto})
    base = GenServer.call(name, :info).size
    c = 4_000

    pids =
      for i <- 1..c do
        {:ok, pid} = DS.start_child(name, %{id: i, start: {Agent, :start_link, [fn -> i end]}})
        pid
      end

    peak = GenServer.call(name, :info).memory
    assert peak > 1.2 * @small, "peak #{peak} B"
    for pid <- pids, do: assert(:ok = DS.terminate_child(name, pid))
    wait_until(fn -> GenServer.call(name, :info).size == base end, 60_000)
    after_ = GenServer.call(name, :info).memory
    assert after_ <= div(@small, 2), "#{after_} B after all children went (peak #{peak} B)"
  end
end
