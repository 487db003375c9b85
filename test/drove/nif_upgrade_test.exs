defmodule Drove.NifUpgradeTest do
  # A hot code upgrade of Drove.Native (`:code.load_file/1`, as a release upgrade does) while
  # replicas live: the NIF library's upgrade callback takes the resource types over, so the
  # replicas made by the old code keep working with the new one, and the old code is purged.
  # The reloads run on a peer node so that the test node's own module is never reloaded.
  use ExUnit.Case, async: false

  alias Drove.TestCluster, as: C
  alias Drove.Test.{CRDTPeer, Named, ReloadPeer}
  alias Drove.Test.RegistryPeer, as: P

  @moduletag :cluster
  @moduletag timeout: 120_000

  @crdt :crdt_reloaded
  @reg :registry_reloaded

  defp map(node), do: C.rpc(node, Drove.CRDT, :to_map, [@crdt])
  defp lookup(node, key), do: C.rpc(node, Drove.Registry, :lookup, [@reg, key])

  test "replicas and a registry keep working across two reloads of Drove.Native" do
    [a, b] = nodes = C.start_nodes(2)

    for n <- nodes do
      {:ok, _} = C.rpc(n, CRDTPeer, :start, [@crdt, for(m <- nodes, m != n, do: {@crdt, m})])
      C.rpc(n, P, :start, [@reg, [members: for(m <- nodes, do: {@reg, m})]])
    end

    C.rpc(a, CRDTPeer, :put_range, [@crdt, :before, 1..50])
    {:ok, held} = C.rpc(a, Named, :start, [@reg, :held_from_before])

    C.wait_until(fn ->
      map_size(map(b)) == 50 and lookup(b, :held_from_before) == [{held, nil}]
    end)

    for round <- 1..2 do
      assert C.rpc(a, ReloadPeer, :reload, [Drove.Native]) == :ok
      refute C.rpc(a, :erlang, :check_old_code, [Drove.Native])

      # write and read on the reloaded node, through the replicas the old code made
      C.rpc(a, CRDTPeer, :put_range, [@crdt, {:after, round}, 1..50])
      assert C.rpc(a, Drove.CRDT, :get, [@crdt, {{:after, round}, 7}]) != nil
      {:ok, pid} = C.rpc(a, Named, :start, [@reg, {:after, round}])
      assert lookup(a, {:after, round}) == [{pid, nil}]

      # and replication both ways
      C.rpc(b, Drove.CRDT, :put, [@crdt, {:from_b, round}, round])
      {:ok, pid_b} = C.rpc(b, Named, :start, [@reg, {:from_b, round}])

      C.wait_until(fn ->
        map(a) == map(b) and map_size(map(a)) == 50 + round * 51 and
          lookup(b, {:after, round}) == [{pid, nil}] and
          lookup(a, {:from_b, round}) == [{pid_b, nil}]
      end)
    end

    # the exit of a registrant filed by the old code is still seen (the replica's process
    # monitor calls the down callback of the library that took the type over)
    C.rpc(a, Process, :exit, [held, :kill])

    C.wait_until(fn ->
      lookup(a, :held_from_before) == [] and lookup(b, :held_from_before) == []
    end)
  end

  test "a placement ring made before the reloads answers the same after them" do
    [a] = C.start_nodes(1)
    assert C.rpc(a, ReloadPeer, :ring_across_reloads, []) == [[0, 1, 0], [0, 1, 0], [0, 1, 0]]
  end
end
