defmodule Horde.SagentsTest do
  # A Sagents-shaped application written against Horde's API only runs on this package
  # (sagents-contract.md sections 7, 8.3, 10-12): three instances named like Sagents' built
  # with `use Horde.Registry` / `use Horde.DynamicSupervisor`, a :pg membership manager in
  # :participation mode that calls Horde.Cluster.set_members/2, a registry watcher, all in a
  # :rest_for_one tree (test/support/sagents_shaped.ex) on real peers.
  use ExUnit.Case, async: false

  alias Drove.TestCluster, as: C
  alias Horde.Test.Sagents, as: S

  @moduletag :cluster
  @moduletag timeout: 120_000
  @moduletag :capture_log

  @deadline 15_000

  defp start_nodes(n, prefix),
    do: C.start_nodes(n, prefix: prefix, env: [logger: [level: :error]])

  defp start_sagents(node, opts \\ []), do: C.rpc(node, S, :start, [opts])

  defp hordes(node), do: C.rpc(node, S, :hordes, [])

  defp all_list?(nodes, expected) do
    Enum.all?(nodes, fn n ->
      C.rpc(n, S, :member_nodes, []) == Map.new(hordes(n), &{&1, Enum.sort(expected)})
    end)
  end

  defp await_members(nodes, expected),
    do: C.wait_until(fn -> all_list?(nodes, expected) end, @deadline)

  defp start_agent(node, id) do
    {:ok, pid} = C.rpc(node, S, :start_agent, [id])
    pid
  end

  defp get_pid(node, id), do: C.rpc(node, S, :get_pid, [id])

  # A positive barrier for "nothing changes": on every node, the :pg scope, the membership
  # manager (told of group changes by the scope) and the registry have handled all that
  # reached them so far. Call it once the change itself is seen.
  defp drained(nodes) do
    names = [Sagents.Horde.MembershipScope, Sagents.Horde.MembershipManager, Sagents.Registry]

    for n <- nodes, name <- names do
      if C.rpc(n, Process, :whereis, [name]), do: C.rpc(n, :sys, :get_state, [name])
    end

    :ok
  end

  # every agent resolves on `node`, through its agent server too
  defp resolves?(node, agents) do
    Enum.all?(agents, fn {id, pid} ->
      get_pid(node, id) == {:ok, pid} and match?({:ok, _}, C.rpc(node, S, :fetch, [id]))
    end)
  end

  test "scoped membership and partitions: participants only, ord and cdg never meet" do
    [ord1, ord2, cdg1, cdg2, idle] = nodes = start_nodes(5, "sagents")
    for n <- [ord1, ord2], do: start_sagents(n, partition: "ord")
    for n <- [cdg1, cdg2], do: start_sagents(n, partition: "cdg")

    await_members([ord1, ord2], [ord1, ord2])
    await_members([cdg1, cdg2], [cdg1, cdg2])
    assert C.mesh?(nodes)
    # neither the idle node nor the test runner ever becomes a member
    drained(nodes)
    assert all_list?([ord1, ord2], [ord1, ord2]) and all_list?([cdg1, cdg2], [cdg1, cdg2])

    assert C.rpc(idle, Process, :whereis, [Sagents.Registry]) == nil

    # an agent started in ord is found on both ord nodes and on no cdg node
    ord_agent = start_agent(ord1, "ord-only")
    assert node(ord_agent) in [ord1, ord2]
    C.wait_until(fn -> get_pid(ord2, "ord-only") == {:ok, ord_agent} end, @deadline)

    # the same agent started in cdg is a second agent there (routing is the app's job)
    cdg_agent = start_agent(cdg2, "ord-only")
    assert node(cdg_agent) in [cdg1, cdg2]
    C.wait_until(fn -> get_pid(cdg1, "ord-only") == {:ok, cdg_agent} end, @deadline)

    # and so it stays through two anti-entropy rounds of every registry
    C.consistently_through_rounds(
      fn ->
        Enum.all?([ord1, ord2], &(get_pid(&1, "ord-only") == {:ok, ord_agent})) and
          Enum.all?([cdg1, cdg2], &(get_pid(&1, "ord-only") == {:ok, cdg_agent}))
      end,
      [ord1, ord2, cdg1, cdg2],
      &C.rpc(&1, Drove.Registry, :info, [Sagents.Registry])
    )

    assert C.rpc(node(ord_agent), Process, :alive?, [ord_agent])
    assert C.rpc(node(cdg_agent), Process, :alive?, [cdg_agent])
  end

  test "a registry crash on a non-host node: it restarts, heals from its peer, the agent lives" do
    [a, _b] = nodes = start_nodes(2, "crash")
    Enum.each(nodes, &start_sagents/1)
    await_members(nodes, nodes)

    agent = start_agent(a, "agent-1")
    host = node(agent)
    [other] = nodes -- [host]
    C.wait_until(fn -> get_pid(other, "agent-1") == {:ok, agent} end, @deadline)

    old = C.rpc(other, S, :kill_registry, [])

    C.wait_until(
      fn ->
        new = C.rpc(other, Process, :whereis, [Sagents.Registry])
        is_pid(new) and new != old and C.rpc(other, S, :available?, [])
      end,
      @deadline
    )

    C.wait_until(fn -> get_pid(other, "agent-1") == {:ok, agent} end, @deadline)
    await_members(nodes, nodes)
    assert C.rpc(host, Process, :alive?, [agent])
    assert get_pid(host, "agent-1") == {:ok, agent}
  end

  describe "with the dynamic supervisors" do
    # n agents started via `via`, replicated and counted on every node, members alive
    defp start_agents(nodes, via, n) do
      agents = for i <- 1..n, do: {"agent-#{i}", start_agent(via, "agent-#{i}")}
      C.wait_until(fn -> Enum.all?(nodes, &resolves?(&1, agents)) end, @deadline)

      for node <- nodes do
        C.wait_until(fn -> count_specs(node) >= n end, @deadline)
        C.wait_until(fn -> Enum.all?(nodes, &C.rpc(node, S, :member_alive?, [&1])) end, @deadline)
      end

      agents
    end

    defp count_specs(node),
      do:
        C.rpc(node, Horde.DynamicSupervisor, :count_children, [Sagents.AgentsDynamicSupervisor]).specs

    defp transfers_to(survivor, departed, agents) do
      C.wait_until(
        fn ->
          Enum.all?(agents, fn {id, pid} ->
            case get_pid(survivor, id) do
              {:ok, new} when node(pid) == departed -> node(new) == survivor
              {:ok, same} -> same == pid
              _ -> false
            end
          end)
        end,
        @deadline
      )
    end

    test "node stopped abruptly: its agents restart on the survivor, the others keep their pid" do
      [a, _b] = nodes = start_nodes(2, "transfer")
      Enum.each(nodes, &start_sagents/1)
      await_members(nodes, nodes)
      agents = start_agents(nodes, a, 6)

      # the node that hosts the first agent goes away
      departed = node(elem(hd(agents), 1))
      [survivor] = nodes -- [departed]
      C.kill(departed)

      await_members([survivor], [survivor])
      transfers_to(survivor, departed, agents)

      assert C.rpc(survivor, S, :list_running_agents, []) |> Enum.sort() ==
               Enum.sort(for {id, _} <- agents, do: id)
    end

    # The membership manager leaves :pg before the supervisors stop, as in Sagents: a
    # survivor's takeover can meet the stopping agent's registry name for a few moments
    # ({:error, {:already_started, pid}}); Drove retries such a takeover while the entry is
    # still orphaned.
    test "graceful stop (:init.stop): the agents are handed to the survivor" do
      [_a, b] = nodes = start_nodes(2, "graceful")
      Enum.each(nodes, &start_sagents/1)
      await_members(nodes, nodes)
      agents = start_agents(nodes, b, 6)

      departed = node(elem(hd(agents), 1))
      [survivor] = nodes -- [departed]
      C.stop(departed)

      await_members([survivor], [survivor])
      transfers_to(survivor, departed, agents)
    end

    test "a transient agent that shut down normally is restarted nowhere" do
      [a, b] = nodes = start_nodes(2, "transient")
      Enum.each(nodes, &start_sagents/1)
      await_members(nodes, nodes)
      [{id, pid}] = start_agents(nodes, a, 1)

      :ok = C.rpc(node(pid), S, :stop_agent_normally, [id])

      C.wait_until(
        fn -> Enum.all?(nodes, &(get_pid(&1, id) == {:error, :not_found})) end,
        @deadline
      )

      # the supervisors at rest with equal replicas (nothing starting, restarting or
      # stopping, every entry owned and run by a live member): nothing can start it again
      sup = Sagents.AgentsDynamicSupervisor

      C.wait_until(
        fn ->
          Enum.all?(nodes, &C.rpc(&1, Drove.Test.SupPeer, :at_rest?, [sup, nodes])) and
            length(Enum.uniq(Enum.map(nodes, &C.rpc(&1, Drove.Test.SupPeer, :digest, [sup])))) ==
              1
        end,
        @deadline
      )

      assert Enum.all?(nodes, &(get_pid(&1, id) == {:error, :not_found}))
      assert count_specs(b) == 0
    end

    # The membership manager leaves :pg before the supervisors stop, as in Sagents: a
    # survivor's takeover can meet the stopping agent's registry name for a few moments
    # ({:error, {:already_started, pid}}); Drove retries such a takeover while the entry is
    # still orphaned.
    test "rolling deploy: only the draining node is affected" do
      [n1, n2, n3] = nodes = start_nodes(3, "rolling")
      Enum.each(nodes, &start_sagents/1)
      await_members(nodes, nodes)
      agents = start_agents(nodes, n1, 6)
      survivors = [n2, n3]

      drain = Task.async(fn -> C.rpc(n1, S, :stop, [], 60_000) end)

      # while n1 drains, the survivors never see the registry unavailable
      probe = fn ->
        for n <- survivors, {id, _} <- agents, do: C.rpc(n, S, :fetch, [id])
      end

      seen =
        Stream.repeatedly(fn -> Process.sleep(20) && probe.() end)
        |> Enum.take_while(fn _ -> Task.yield(drain, 0) == nil end)
        |> List.flatten()

      assert {:error, :registry_unavailable} not in seen

      # the drained node cannot answer: the sentinel is gone and raw reads raise
      refute C.rpc(n1, S, :available?, [])
      assert {:error, :registry_unavailable} = C.rpc(n1, S, :fetch, ["agent-1"])
      assert {:raised, %ArgumentError{}, _} = C.rpc(n1, S, :raw_whereis, ["agent-1"])

      # the survivors resolve every agent, the ones from n1 on themselves
      await_members(survivors, survivors)

      C.wait_until(
        fn ->
          Enum.all?(survivors, fn n ->
            Enum.all?(agents, fn {id, _} ->
              case get_pid(n, id) do
                {:ok, p} -> node(p) in survivors and match?({:ok, _}, C.rpc(n, S, :fetch, [id]))
                _ -> false
              end
            end)
          end)
        end,
        @deadline
      )
    end
  end
end
