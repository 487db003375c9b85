defmodule Drove.CRDTClusterTest do
  # Real peer nodes (OTP :peer on loopback): replication, catch-up, faults.
  use ExUnit.Case, async: false

  alias Drove.TestCluster, as: C
  alias Drove.Test.CRDTPeer

  @moduletag :cluster
  @moduletag timeout: 120_000

  @name :crdt_under_test

  defp start_replicas(nodes, opts \\ []) do
    for n <- nodes do
      neighbours = for m <- nodes, m != n, do: {@name, m}
      {:ok, _} = C.rpc(n, CRDTPeer, :start, [@name, neighbours, opts])
    end

    :ok
  end

  defp map(node), do: C.rpc(node, Drove.CRDT, :to_map, [@name])
  defp size(node), do: C.rpc(node, CRDTPeer, :size, [@name])
  defp digest(node), do: C.rpc(node, CRDTPeer, :digest, [@name])

  test "3 nodes converge after concurrent writes and deletes" do
    nodes = [a, b, c] = C.start_nodes(3)
    start_replicas(nodes)

    tasks =
      for {n, i} <- Enum.with_index(nodes) do
        Task.async(fn ->
          C.rpc(n, CRDTPeer, :put_range, [@name, :shared, 1..2000])
          C.rpc(n, CRDTPeer, :put_range, [@name, i, 1..1000])
          C.rpc(n, CRDTPeer, :delete_range, [@name, i, 1..100])
        end)
      end

    Enum.each(tasks, &Task.await(&1, 30_000))
    C.wait_until(fn -> Enum.all?(nodes, &(size(&1) == 2000 + 3 * 900)) end, 10_000)
    C.wait_until(fn -> digest(a) == digest(b) and digest(b) == digest(c) end, 10_000)
    assert map(a) == map(b)
    assert map(b) == map(c)
    assert map(a)[{1, 101}] == 101
    refute Map.has_key?(map(c), {0, 50})
  end

  test "a node that was down catches up when it returns" do
    [a, b, c] = nodes = C.start_nodes(3)
    start_replicas(nodes)
    C.rpc(c, CRDTPeer, :put_range, [@name, :from_c, 1..500])
    C.wait_until(fn -> size(a) == 500 end)
    C.kill(c)
    C.rpc(a, CRDTPeer, :put_range, [@name, :while_down, 1..5000])
    C.rpc(b, CRDTPeer, :delete_range, [@name, :from_c, 1..100])
    c = C.restart(c)
    {:ok, _} = C.rpc(c, CRDTPeer, :start, [@name, [{@name, a}, {@name, b}]])
    C.wait_until(fn -> size(c) == 5400 end, 10_000)
    C.wait_until(fn -> digest(a) == digest(c) end, 10_000)
    assert map(c) == map(a)
    refute Map.has_key?(map(c), {:from_c, 1})
  end

  test "a neighbour killed mid-sync causes no loss" do
    [a, b] = nodes = C.start_nodes(2)
    # tiny messages: the catch-up below takes hundreds of messages
    {:ok, _} = C.rpc(a, CRDTPeer, :start, [@name, [], [max_message_bytes: 2048]])
    C.rpc(a, CRDTPeer, :put_range, [@name, :a, 1..20_000])
    {:ok, pid} = C.rpc(b, CRDTPeer, :start, [@name, [], [max_message_bytes: 2048]])
    C.rpc(b, CRDTPeer, :put_range, [@name, :b, 1..3000])
    C.rpc(a, Drove.CRDT, :set_neighbours, [@name, [{@name, b}]])
    C.wait_until(fn -> size(b) > 3000 end, 10_000)
    C.rpc(b, Process, :exit, [pid, :kill])
    assert size(a) >= 20_000
    # b's 3000 keys went to a before or during the cut, or never: nothing a had is lost
    a_map = map(a)
    assert Enum.all?(1..20_000, &Map.has_key?(a_map, {:a, &1}))
    C.wait_until(fn -> C.rpc(b, Process, :whereis, [@name]) == nil end)
    {:ok, _} = C.rpc(b, CRDTPeer, :start, [@name, [{@name, a}], [max_message_bytes: 2048]])
    C.wait_until(fn -> size(b) == size(a) end, 20_000)
    C.wait_until(fn -> digest(a) == digest(b) end, 10_000)
    assert map(a) == map(b)
    _ = nodes
  end

  test "a garbage message from a peer is ignored and counted" do
    [a, b] = nodes = C.start_nodes(2)
    start_replicas(nodes)
    C.rpc(a, CRDTPeer, :put_range, [@name, :x, 1..10])
    C.wait_until(fn -> size(b) == 10 end)
    before = digest(b)
    target = {@name, b}
    C.rpc(a, Kernel, :send, [target, {:drove_delta, self(), <<"DV", 1, 1, 0, 1, 2>>}])
    C.rpc(a, Kernel, :send, [target, {:drove_sync_reply, self(), make_ref(), "x", "y"}])
    C.rpc(a, Kernel, :send, [target, {:totally, :unexpected}])
    C.wait_until(fn -> C.rpc(b, Drove.CRDT, :info, [@name]).bad_messages == 3 end)
    assert digest(b) == before
    C.rpc(a, CRDTPeer, :put_range, [@name, :y, 1..10])
    C.wait_until(fn -> size(b) == 20 end)
  end

  test "on_diffs reports remote adds and removes" do
    [a, b] = nodes = C.start_nodes(2)
    start_replicas(nodes)
    C.rpc(a, Drove.CRDT, :put, [@name, :k, 1])
    C.wait_until(fn -> {:add, :k, 1} in C.rpc(b, CRDTPeer, :diffs, [@name]) end)
    C.rpc(a, Drove.CRDT, :put, [@name, :k, 2])
    C.wait_until(fn -> {:add, :k, 2} in C.rpc(b, CRDTPeer, :diffs, [@name]) end)
    C.rpc(b, Drove.CRDT, :delete, [@name, :k])
    C.wait_until(fn -> {:remove, :k} in C.rpc(a, CRDTPeer, :diffs, [@name]) end)
    assert C.rpc(a, CRDTPeer, :diffs, [@name]) == [{:add, :k, 1}, {:add, :k, 2}, {:remove, :k}]
  end

  test "a partition heals: writes on both sides and a put racing a delete converge" do
    [a, b, c] = nodes = C.start_nodes(3, auto_connect: false)
    start_replicas(nodes)
    C.rpc(a, Drove.CRDT, :put, [@name, :contested, :before])
    C.wait_until(fn -> Enum.all?(nodes, &(size(&1) == 1)) end)
    C.partition([[a, b], [c]])
    C.rpc(a, Drove.CRDT, :delete, [@name, :contested])
    C.rpc(c, Drove.CRDT, :put, [@name, :contested, :after])
    C.rpc(a, CRDTPeer, :put_range, [@name, :ab, 1..1000])
    C.rpc(c, CRDTPeer, :put_range, [@name, :c, 1..1000])
    C.heal(nodes)
    C.wait_until(fn -> Enum.all?(nodes, &(size(&1) == 2001)) end, 15_000)
    # add-wins: the put concurrent with the delete survives everywhere
    assert Enum.all?(nodes, &(map(&1)[:contested] == :after))
    C.wait_until(fn -> digest(a) == digest(c) and digest(b) == digest(c) end)
  end
end
