defmodule Horde.ClusterTest do
  # Horde.Registry and Horde.DynamicSupervisor across real peers, membership through
  # Horde.Cluster and Horde.NodeListener (horde-semantics.md sections 2.3, 2.4, 3.5, 4).
  use ExUnit.Case, async: false

  alias Drove.TestCluster, as: C
  alias Horde.Test.Peer

  @moduletag :cluster
  @moduletag timeout: 120_000
  @moduletag :capture_log

  @reg Horde.ClusterTest.Registry
  @sup Horde.ClusterTest.Supervisor

  defp start_nodes(n), do: C.start_nodes(n, prefix: "horde", env: [logger: [level: :error]])

  defp members(node, instance),
    do: node |> C.rpc(Horde.Cluster, :members, [instance]) |> Enum.sort()

  defp await_members(nodes, instance, expected) do
    want = expected |> Enum.map(&{instance, &1}) |> Enum.sort()
    C.wait_until(fn -> Enum.all?(nodes, &(members(&1, instance) == want)) end, 10_000)
  end

  defp join(nodes, instance) do
    all = for n <- nodes, do: {instance, n}
    for n <- nodes, do: :ok = C.rpc(n, Horde.Cluster, :set_members, [instance, all])
    await_members(nodes, instance, nodes)
  end

  defp lookup(node, key), do: C.rpc(node, Horde.Registry, :lookup, [@reg, key])

  test "registry: set_members/members, replication to every member, node loss" do
    [a, b, c] = nodes = start_nodes(3)
    for n <- nodes, do: C.rpc(n, Peer, :start_registry, [@reg])
    join(nodes, @reg)

    {:ok, pid} = C.rpc(a, Peer, :start_named, [@reg, {:agent, 1}])
    C.wait_until(fn -> Enum.all?(nodes, &(lookup(&1, {:agent, 1}) == [{pid, nil}])) end)
    assert C.rpc(c, Horde.Registry, :keys, [@reg, pid]) == [{:agent, 1}]
    assert C.rpc(b, Horde.Registry, :count, [@reg]) == 1

    # a via start of a name held on another node: {:error, {:already_started, pid}}
    assert C.rpc(b, Peer, :start_named, [@reg, {:agent, 1}]) == {:error, {:already_started, pid}}

    # a set_members without c: it is no longer a member of a
    :ok = C.rpc(a, Horde.Cluster, :set_members, [@reg, [{@reg, a}, {@reg, b}]])
    assert {@reg, c} not in members(a, @reg)

    # node loss: its registrations disappear from the survivors
    C.kill(a)
    C.wait_until(fn -> lookup(b, {:agent, 1}) == [] and lookup(c, {:agent, 1}) == [] end)
    assert {:ok, _} = C.rpc(c, Peer, :start_named, [@reg, {:agent, 1}])
  end

  test "registry: a name held on two nodes before they join resolves to one winner" do
    [a, b] = nodes = start_nodes(2)
    for n <- nodes, do: C.rpc(n, Peer, :start_registry, [@reg])
    me = self()
    {:ok, pa} = C.rpc(a, Peer, :start_named, [@reg, :same, me])
    {:ok, pb} = C.rpc(b, Peer, :start_named, [@reg, :same, me])

    join(nodes, @reg)

    C.wait_until(fn ->
      [x] = lookup(a, :same)
      [y] = lookup(b, :same)
      x == y
    end)

    [{winner, nil}] = lookup(a, :same)
    loser = if winner == pa, do: pb, else: pa
    assert_receive {:worker_exit, ^loser, {:name_conflict, {:same, nil}, @reg, ^winner}}, 5000
    refute_received {:worker_exit, ^winner, _}
  end

  test "registry: members: :auto, and Horde.NodeListener for an explicit member list" do
    [a, b] = nodes = start_nodes(2)
    for n <- nodes, do: C.rpc(n, Peer, :start_registry, [@reg, [members: :auto]])

    C.wait_until(fn ->
      Enum.all?(nodes, &({@reg, a} in members(&1, @reg) and {@reg, b} in members(&1, @reg)))
    end)

    other = Horde.ClusterTest.Listened
    for n <- nodes, do: C.rpc(n, Peer, :start_registry, [other])
    assert members(a, other) == [{other, a}]

    for n <- nodes do
      {:ok, _} =
        C.rpc(n, Supervisor, :start_child, [Drove.Supervisor, {Horde.NodeListener, other}])
    end

    assert is_pid(C.rpc(a, Process, :whereis, [Module.concat(other, NodeListener)]))

    C.wait_until(fn ->
      Enum.all?(nodes, &({other, a} in members(&1, other) and {other, b} in members(&1, other)))
    end)

    assert {other, a} in C.rpc(b, Horde.NodeListener, :make_members, [other])
  end

  describe "dynamic supervisor" do
    defp children(node), do: C.rpc(node, Horde.DynamicSupervisor, :which_children, [@sup])

    defp pids(node), do: for({_, pid, _, _} <- children(node), is_pid(pid), do: pid)

    test "placement, cluster-wide which/count/terminate, failover on kill, handoff on stop" do
      [a, b, c] = nodes = start_nodes(3)
      for n <- nodes, do: C.rpc(n, Peer, :start_supervisor, [@sup])
      join(nodes, @sup)

      C.wait_until(fn ->
        C.rpc(a, Peer, :member_statuses, [@sup]) == Map.new(nodes, &{&1, :alive})
      end)

      started =
        for i <- 1..30 do
          {:ok, pid} =
            C.rpc(a, Horde.DynamicSupervisor, :start_child, [@sup, Horde.Test.Worker.spec(tag: i)])

          pid
        end

      # the strategy spreads children over the members; every node sees all of them
      assert started |> Enum.map(&node/1) |> Enum.uniq() |> length() > 1
      C.wait_until(fn -> Enum.all?(nodes, &(Enum.sort(pids(&1)) == Enum.sort(started))) end)

      assert %{specs: 30, active: 30, workers: 30} =
               C.rpc(b, Horde.DynamicSupervisor, :count_children, [@sup])

      # terminate_child of a child on another node
      remote = Enum.find(started, &(node(&1) == c))
      assert C.rpc(a, Horde.DynamicSupervisor, :terminate_child, [@sup, remote]) == :ok

      assert C.rpc(a, Horde.DynamicSupervisor, :terminate_child, [@sup, remote]) ==
               {:error, :not_found}

      C.wait_until(fn ->
        C.rpc(b, Horde.DynamicSupervisor, :count_children, [@sup]).specs == 29
      end)

      # abrupt loss of c: its children are started on the survivors
      C.kill(c)
      C.wait_until(fn -> C.rpc(a, Peer, :member_statuses, [@sup])[c] in [:dead, nil] end)

      C.wait_until(
        fn ->
          ps = pids(a)
          length(ps) == 29 and Enum.all?(ps, &(node(&1) in [a, b]))
        end,
        15_000
      )

      # graceful stop of b: its children are handed to a
      C.stop(b)

      C.wait_until(
        fn ->
          ps = pids(a)
          length(ps) == 29 and Enum.all?(ps, &(node(&1) == a))
        end,
        15_000
      )
    end
  end
end
