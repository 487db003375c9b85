defmodule Drove.SagentsMembershipTest do
  # Sagents' membership behaviours (sagents-contract.md sections 7, 10, 11 and 12.1) with
  # REAL Drove instances on real peers: each participating node runs a stand-in for
  # Sagents.Supervisor under :participation (test/support/sagents_peer.ex): three instances
  # named like Sagents' (a Drove.Registry and two Drove.DynamicSupervisors), each seeded
  # self-only, plus a Drove.Membership in mode :participation over all three.
  use ExUnit.Case, async: false

  alias Drove.TestCluster, as: C
  alias Drove.Test.SagentsPeer, as: S

  @moduletag :cluster
  @moduletag timeout: 120_000
  @moduletag :capture_log

  @instances S.instances()
  @deadline 10_000

  # peers log only errors (their output is not captured)
  defp start_nodes(n, prefix),
    do: C.start_nodes(n, prefix: prefix, env: [logger: [level: :error]])

  defp start_sagents(node, opts \\ []), do: C.rpc(node, S, :start, [opts])

  defp member_nodes(node), do: C.rpc(node, S, :member_nodes, [])

  # every instance on every node of `nodes` lists exactly `expected` (as {instance, node})
  defp all_list?(nodes, expected) do
    want = Map.new(@instances, &{&1, Enum.sort(expected)})
    Enum.all?(nodes, &(member_nodes(&1) == want))
  end

  defp await_members(nodes, expected) do
    C.wait_until(fn -> all_list?(nodes, expected) end, @deadline)
  end

  defp lookup(node, key) do
    {:ok, entries} = C.rpc(node, S, :lookup, [key])
    entries
  end

  defp start_agent(node, key) do
    {:ok, pid} = C.rpc(node, S, :start_agent, [key])
    pid
  end

  defp table?(node), do: C.rpc(node, S, :table?, [])

  # A positive barrier for "nothing changes": on every node, the :pg scope, the Membership
  # (told of group changes by the scope) and the registry's server (told of nodeups) have
  # handled all that reached them so far. Call it once the change itself is seen.
  defp drained(nodes) do
    names = [Drove.Membership.default_scope(), Sagents.Horde.MembershipManager, Sagents.Registry]

    for n <- nodes, name <- names do
      if C.rpc(n, Process, :whereis, [name]), do: C.rpc(n, :sys, :get_state, [name])
    end

    :ok
  end

  defp registry_info(node), do: C.rpc(node, Drove.Registry, :info, [Sagents.Registry])

  test "3 peers, 2 participants: all three instances on both list exactly those 2" do
    [web1, web2, web3] = start_nodes(3, "web")
    start_sagents(web1)
    start_sagents(web2)

    await_members([web1, web2], [web1, web2])

    # neither the third node nor the test runner ever becomes a member
    drained([web1, web2, web3])
    assert all_list?([web1, web2], [web1, web2])

    for n <- [web1, web2], {instance, nodes} <- member_nodes(n) do
      assert web3 not in nodes and node() not in nodes, "#{instance} on #{n}: #{inspect(nodes)}"
    end

    assert C.rpc(web1, Drove.Cluster, :members, [Sagents.Registry]) |> Enum.sort() ==
             Enum.sort([{Sagents.Registry, web1}, {Sagents.Registry, web2}])

    # an agent registered on web1 is found on web2; web3 runs no registry at all
    pid = start_agent(web1, "agent-1")
    C.wait_until(fn -> lookup(web2, "agent-1") == [{pid, nil}] end, @deadline)
    assert lookup(web1, "agent-1") == [{pid, nil}]
    assert C.rpc(web3, :ets, :whereis, [:"keys_Elixir.Sagents.Registry"]) == :undefined
    assert {:raised, ArgumentError, _} = C.rpc(web3, S, :lookup, ["agent-1"])
    assert C.rpc(web3, Process, :whereis, [Sagents.Registry]) == nil
  end

  test "a participant stopped gracefully is pruned, and its registrations disappear" do
    [web1, web2] = nodes = start_nodes(2, "web")
    Enum.each(nodes, &start_sagents/1)
    await_members(nodes, nodes)

    on1 = start_agent(web1, "agent-on-web1")
    on2 = for i <- 1..20, do: {"agent-on-web2-#{i}", start_agent(web2, "agent-on-web2-#{i}")}

    C.wait_until(
      fn -> Enum.all?(on2, fn {key, pid} -> lookup(web1, key) == [{pid, nil}] end) end,
      @deadline
    )

    assert C.rpc(web1, Drove.Registry, :count, [Sagents.Registry]) == 21

    C.stop(web2)

    await_members([web1], [web1])
    assert C.rpc(web1, S, :membership_nodes, []) == [web1]

    C.wait_until(fn -> Enum.all?(on2, fn {key, _} -> lookup(web1, key) == [] end) end, @deadline)
    assert C.rpc(web1, Drove.Registry, :count, [Sagents.Registry]) == 1
    assert lookup(web1, "agent-on-web1") == [{on1, nil}]

    # the removal is real, not just hidden while web2 is disconnected: when a node of the
    # same name comes back (without Sagents yet), web2's old names stay gone and are free
    web2 = C.restart(web2)
    assert web2 in C.rpc(web1, Node, :list, [])

    # web1 has handled the new node's nodeup (no registry runs there, so no round follows)
    drained([web1])
    assert Enum.all?(on2, fn {key, _} -> lookup(web1, key) == [] end)

    {key, _} = hd(on2)
    assert node(start_agent(web1, key)) == web1
  end

  # A killed node's entries stay in the survivors' replicas (only the owning node removes
  # entries) and are hidden on nodedown. A node restarted under the same name must not bring
  # them back: the survivor learns the new incarnation's creation on nodeup and drops pids of
  # the earlier one. (Found as a bug while writing this suite: old pids reappeared.)
  test "a participant killed and restarted under the same name: its old names stay gone" do
    [web1, web2] = nodes = start_nodes(2, "web")
    Enum.each(nodes, &start_sagents/1)
    await_members(nodes, nodes)

    dead = start_agent(web2, "agent-on-web2")
    C.wait_until(fn -> lookup(web1, "agent-on-web2") == [{dead, nil}] end, @deadline)

    C.kill(web2)
    await_members([web1], [web1])
    C.wait_until(fn -> lookup(web1, "agent-on-web2") == [] end, @deadline)

    # the same node name comes back and connects; Sagents is not started there yet
    web2 = C.restart(web2)
    assert web2 in C.rpc(web1, Node, :list, [])

    drained([web1])
    assert lookup(web1, "agent-on-web2") == []
    assert node(start_agent(web1, "agent-on-web2")) == web1
  end

  test "partitions ord and cdg on one connected cluster never see each other" do
    [ord1, ord2, cdg1, cdg2] = nodes = start_nodes(4, "part")
    for n <- [ord1, ord2], do: start_sagents(n, partition: "ord")
    for n <- [cdg1, cdg2], do: start_sagents(n, partition: "cdg")

    await_members([ord1, ord2], [ord1, ord2])
    await_members([cdg1, cdg2], [cdg1, cdg2])
    assert C.mesh?(nodes)

    # a name registered in ord reaches the other ord node, never a cdg node
    ord_only = start_agent(ord1, "ord-only")
    C.wait_until(fn -> lookup(ord2, "ord-only") == [{ord_only, nil}] end, @deadline)

    # the same name registered in both partitions: each gets its own owner
    shared_ord = start_agent(ord2, "shared")
    shared_cdg = start_agent(cdg1, "shared")
    assert node(shared_ord) == ord2 and node(shared_cdg) == cdg1
    C.wait_until(fn -> lookup(ord1, "shared") == [{shared_ord, nil}] end, @deadline)
    C.wait_until(fn -> lookup(cdg2, "shared") == [{shared_cdg, nil}] end, @deadline)

    # through two anti-entropy rounds of every registry, after the memberships settled
    drained(nodes)

    C.consistently_through_rounds(
      fn ->
        all_list?([ord1, ord2], [ord1, ord2]) and all_list?([cdg1, cdg2], [cdg1, cdg2]) and
          Enum.all?([cdg1, cdg2], &(lookup(&1, "ord-only") == [])) and
          Enum.all?([ord1, ord2], &(lookup(&1, "shared") == [{shared_ord, nil}])) and
          Enum.all?([cdg1, cdg2], &(lookup(&1, "shared") == [{shared_cdg, nil}]))
      end,
      nodes,
      &registry_info/1
    )

    # both holders are alive: neither lost a name conflict
    assert C.rpc(ord2, Process, :alive?, [shared_ord])
    assert C.rpc(cdg1, Process, :alive?, [shared_cdg])
  end

  test "a registry crash on a non-host node: it restarts and heals from its peer" do
    [a, b] = nodes = start_nodes(2, "crash")
    Enum.each(nodes, &start_sagents/1)
    await_members(nodes, nodes)

    agent = start_agent(a, "agent-on-a")
    C.wait_until(fn -> lookup(b, "agent-on-a") == [{agent, nil}] end, @deadline)

    old = C.rpc(b, S, :kill_registry, [])

    # its own supervisor restarts it (seeded self-only); it heals from a
    C.wait_until(
      fn ->
        new = C.rpc(b, Process, :whereis, [Sagents.Registry])
        is_pid(new) and new != old
      end,
      @deadline
    )

    C.wait_until(fn -> lookup(b, "agent-on-a") == [{agent, nil}] end, @deadline)
    assert table?(b)
    assert C.rpc(b, S, :table_owned_by_registry?, [])
    await_members(nodes, nodes)
    assert C.rpc(a, Process, :alive?, [agent])
  end

  test "the keys table exists exactly while the registry runs" do
    [a, b] = nodes = start_nodes(2, "drain")
    Enum.each(nodes, &start_sagents/1)
    await_members(nodes, nodes)

    assert table?(b)
    assert C.rpc(b, S, :table_owned_by_registry?, [])
    agent = start_agent(a, "agent-on-a")
    on_b = start_agent(b, "agent-on-b")
    C.wait_until(fn -> lookup(b, "agent-on-a") == [{agent, nil}] end, @deadline)
    C.wait_until(fn -> lookup(a, "agent-on-b") == [{on_b, nil}] end, @deadline)

    :ok = C.rpc(b, S, :stop, [])

    assert C.rpc(b, :ets, :whereis, [:"keys_Elixir.Sagents.Registry"]) == :undefined
    assert C.rpc(b, Process, :whereis, [Sagents.Registry]) == nil
    assert {:raised, ArgumentError, message} = C.rpc(b, S, :lookup, ["agent-on-a"])
    assert message =~ "the table identifier does not refer to an existing ETS table"
    assert {:raised, ArgumentError, message} = C.rpc(b, S, :whereis, ["agent-on-a"])
    assert message =~ "the table identifier does not refer to an existing ETS table"

    # the survivor is unaffected: it prunes b and still serves its agent; b's agents
    # stopped with its tree and are gone from a, although b is still connected
    await_members([a], [a])
    assert lookup(a, "agent-on-a") == [{agent, nil}]
    refute C.rpc(b, Process, :alive?, [on_b])
    assert b in C.rpc(a, Node, :list, [])
    C.wait_until(fn -> lookup(a, "agent-on-b") == [] end, @deadline)
  end
end
