defmodule Drove.MembershipTest do
  # Drove.Cluster, Drove.Membership and the member-set NIFs (members.c). The multi-node tests
  # reproduce Sagents' participation_membership_test (sagents-contract.md section 12.1) with
  # real peers and three fake instances per node (test/support/fake_instance.ex).
  use ExUnit.Case, async: false

  alias Drove.TestCluster, as: C
  alias Drove.Test.FakeInstance, as: F

  @moduletag timeout: 120_000
  # retries log warnings on purpose; membership changes log at debug level
  @moduletag :capture_log

  # named like Sagents' three distributed instances
  @instances [:drove_test_registry, :drove_test_agents_sup, :drove_test_fs_sup]
  @membership :drove_test_membership

  # ---------------------------------------------------------------------------
  # helpers (everything on peers goes through support modules)

  # peers log only errors (their output is not captured)
  defp start_nodes(n, prefix),
    do: C.start_nodes(n, prefix: prefix, env: [logger: [level: :error]])

  defp start_instances(nodes), do: Enum.each(nodes, &C.rpc(&1, F, :start_all, [@instances]))

  defp start_membership(node, opts) do
    opts = Keyword.merge([name: @membership, instances: @instances], opts)
    {:ok, _pid} = C.rpc(node, F, :start_membership, [opts])
  end

  defp nodes_of(node, instance), do: C.rpc(node, F, :member_nodes, [instance])

  # every instance on every node of `nodes` lists exactly `expected`
  defp all_list?(nodes, expected) do
    expected = Enum.sort(expected)
    Enum.all?(nodes, fn n -> Enum.all?(@instances, &(nodes_of(n, &1) == expected)) end)
  end

  defp await_members(nodes, expected, timeout \\ 10_000) do
    C.wait_until(fn -> all_list?(nodes, expected) end, timeout)
  end

  defp calls(node, instance), do: C.rpc(node, F, :calls, [instance])

  # A positive barrier for "nothing changes": every node's :pg scope, then its Membership
  # (which the scope tells of group changes), has handled all that reached it so far. Call
  # it once the change itself is seen where it must be (e.g. in every node's :pg).
  defp drained(nodes) do
    for n <- nodes, name <- [Drove.Membership.default_scope(), @membership] do
      if C.rpc(n, Process, :whereis, [name]), do: C.rpc(n, :sys, :get_state, [name])
    end

    :ok
  end

  # ---------------------------------------------------------------------------
  # the NIFs (members.c)

  describe "Drove.Native.members_set/2 and members_diff/2" do
    test "members_set: sorted bytewise, de-duplicated, self included" do
      assert Drove.Native.members_set([], "me") == ["me"]
      assert Drove.Native.members_set(["b", "a", "b", "", "me"], "me") == ["", "a", "b", "me"]

      assert Drove.Native.members_set(["ab", "a", <<255>>, <<0>>], "b") ==
               [<<0>>, "a", "ab", "b", <<255>>]

      big = for i <- 1..5000, do: "node#{rem(i * 7919, 3000)}@host"
      result = Drove.Native.members_set(big, "self@host")
      assert result == Enum.uniq(Enum.sort(["self@host" | big]))
    end

    test "members_set agrees with Erlang's atom order for node names" do
      nodes = [:"b@127.0.0.1", :"a@127.0.0.1", :"ab@127.0.0.1", :é@h, :z@h, :"a@127.0.0.1"]
      bins = Enum.map(nodes, &Atom.to_string/1)
      sorted = Drove.Native.members_set(bins, "m@h") |> Enum.map(&String.to_atom/1)
      assert sorted == Enum.sort(Enum.uniq([:m@h | nodes]))
    end

    test "members_diff: added and removed, as sets" do
      assert Drove.Native.members_diff([], []) == {[], []}
      assert Drove.Native.members_diff(["a", "b", "b"], ["c", "a", "c"]) == {["c"], ["b"]}
      assert Drove.Native.members_diff(["x", "y"], ["y", "x", "x"]) == {[], []}

      for _ <- 1..200 do
        old = for _ <- 1..:rand.uniform(40), do: "n#{:rand.uniform(30)}"
        new = for _ <- 1..:rand.uniform(40), do: "n#{:rand.uniform(30)}"
        {added, removed} = Drove.Native.members_diff(old, new)
        assert added == Enum.sort(Enum.uniq(new -- old) -- old)
        assert removed == Enum.sort(Enum.uniq(old -- new) -- new)
      end

      # a large diff runs on a dirty scheduler and gives the same answer
      old = for i <- 1..3000, do: "n#{i}"
      new = for i <- 1001..4000, do: "n#{i}"
      {added, removed} = Drove.Native.members_diff(old, new)
      assert added == Enum.sort(for i <- 3001..4000, do: "n#{i}")
      assert removed == Enum.sort(for i <- 1..1000, do: "n#{i}")
    end

    test "wrong arguments are badarg" do
      bad = [
        fn -> Drove.Native.members_set(["a", :b], "c") end,
        fn -> Drove.Native.members_set(["a" | "b"], "c") end,
        fn -> Drove.Native.members_set(:not_a_list, "c") end,
        fn -> Drove.Native.members_set(["a"], :c) end,
        fn -> Drove.Native.members_set([<<1::7>>], "c") end,
        fn -> Drove.Native.members_set([], :binary.copy("x", 65_537)) end,
        fn -> Drove.Native.members_set(List.duplicate("a", 65_537), "c") end,
        fn -> Drove.Native.members_diff(["a"], "b") end,
        fn -> Drove.Native.members_diff([1], []) end,
        fn -> Drove.Native.members_diff([], List.duplicate("a", 65_537)) end
      ]

      for f <- bad, do: assert_raise(ArgumentError, f)
      assert length(Drove.Native.members_set(List.duplicate("a", 65_536), "c")) == 2
    end
  end

  # ---------------------------------------------------------------------------
  # Drove.Cluster

  describe "Drove.Cluster" do
    test "set_members normalizes names, returns :ok, members reads them back" do
      {:ok, pid} = F.start(:drove_test_local_instance)
      on_exit(fn -> Process.exit(pid, :kill) end)

      assert Drove.Cluster.members(:drove_test_local_instance) == [
               {:drove_test_local_instance, node()}
             ]

      members = [
        :drove_test_local_instance,
        {:other, :"nowhere@127.0.0.1"},
        {:other, :"nowhere@127.0.0.1"}
      ]

      assert Drove.Cluster.set_members(:drove_test_local_instance, members) == :ok

      assert Drove.Cluster.members(:drove_test_local_instance) ==
               [{:drove_test_local_instance, node()}, {:other, :"nowhere@127.0.0.1"}]

      assert :ok = Drove.Cluster.set_members(pid, [], 1000)
      assert Drove.Cluster.members(pid) == []
    end

    test "invalid members raise ArgumentError before the instance is called" do
      {:ok, pid} = F.start(:drove_test_local_instance2)
      on_exit(fn -> Process.exit(pid, :kill) end)

      for bad <- [["name"], [{:a, "node"}], [{:a, :b, :c}], [1], :not_a_list, [{"a", :b}]] do
        e = assert_raise ArgumentError, fn -> Drove.Cluster.set_members(pid, bad) end
        assert e.message =~ "{name, node}"
      end

      assert F.calls(:drove_test_local_instance2) == []
    end
  end

  # ---------------------------------------------------------------------------
  # configuration

  describe "Drove.Membership configuration" do
    test "invalid configuration raises ArgumentError saying what is accepted" do
      cases = [
        {[instances: [:a], mode: :auto, partition: "ord"],
         ~r/:partition only applies to :participation/},
        {[instances: [:a], partition: "ord"], ~r/:partition only applies to :participation/},
        {[instances: [:a], mode: :static], ~r/:mode .* must be :auto or :participation/},
        {[instances: []], ~r/:instances .* non-empty list of instance names/},
        {[instances: :a], ~r/:instances .* list of instance names/},
        {[instances: [:a, "b"]], ~r/:instances/},
        {[mode: :auto], ~r/:instances/},
        {[instances: [:a], scope: "s"], ~r/:scope .* atom/},
        {[instances: [:a], call_timeout: 0], ~r/:call_timeout/},
        {[instances: [:a], poll_interval: -1], ~r/:poll_interval/},
        {[instances: [:a], pg_monitor: :yes], ~r/:pg_monitor .* true or false/},
        {[instances: [:a], members: :auto],
         ~r/unknown Drove.Membership option.*:members.*accepted/},
        {:not_a_keyword_list, ~r/keyword list/}
      ]

      for {opts, message} <- cases do
        e = assert_raise ArgumentError, fn -> Drove.Membership.start_link(opts) end
        assert e.message =~ message, "#{inspect(opts)}: #{e.message}"
      end
    end

    test "a valid configuration starts; nil mode means :auto; the scope is started if missing" do
      scope = :drove_test_scope_local
      refute Process.whereis(scope)

      {:ok, pid} =
        Drove.Membership.start_link(
          instances: [:drove_test_missing],
          mode: :participation,
          scope: scope
        )

      assert is_pid(Process.whereis(scope))
      assert Drove.Membership.members(pid) == [node()]
      # the instance does not exist: its change is pending, retried
      assert Drove.Membership.pending(pid) == [:drove_test_missing]
      {:ok, inst} = F.start(:drove_test_missing)
      C.wait_until(fn -> Drove.Membership.pending(pid) == [] end, 5000)
      assert F.member_nodes(:drove_test_missing) == [node()]
      assert :pg.get_members(scope, :drove_members) == [pid]
      GenServer.stop(pid)
      # graceful stop: left the group and stopped the scope it started
      refute Process.whereis(scope)
      Process.exit(inst, :kill)

      {:ok, pid} = Drove.Membership.start_link(instances: [:drove_test_missing], mode: nil)
      assert Drove.Membership.members(pid) == Enum.sort([node() | Node.list(:visible)])
      GenServer.stop(pid)
    end
  end

  # ---------------------------------------------------------------------------
  # :participation with real peers

  describe ":participation" do
    @describetag :cluster

    test "3 peers, 2 participants: every instance on both lists exactly those 2" do
      [a, b, c] = nodes = start_nodes(3, "web")
      start_instances(nodes)
      start_membership(a, mode: :participation)
      start_membership(b, mode: :participation)

      await_members([a, b], [a, b])
      assert C.rpc(a, Drove.Membership, :members, [@membership]) == Enum.sort([a, b])
      assert C.rpc(b, Drove.Membership, :members, [@membership]) == Enum.sort([a, b])

      # neither the third node nor the runner ever becomes a member; nobody touches c
      drained(nodes)
      assert all_list?([a, b], [a, b]) and all_list?([c], [c])
      assert Enum.all?(@instances, &(calls(c, &1) == []))

      # membership is keyed by node: a second pid of a's node in the group changes nothing
      before = Enum.map(@instances, &calls(a, &1))
      marker = Node.spawn(a, Process, :sleep, [:infinity])
      :ok = C.rpc(a, :pg, :join, [Drove.Membership.default_scope(), :drove_members, marker])

      C.wait_until(fn ->
        marker in C.rpc(b, :pg, :get_members, [Drove.Membership.default_scope(), :drove_members])
      end)

      drained([a, b])
      assert Enum.map(@instances, &calls(a, &1)) == before
      Process.exit(marker, :kill)

      C.wait_until(fn ->
        marker not in C.rpc(b, :pg, :get_members, [
          Drove.Membership.default_scope(),
          :drove_members
        ])
      end)

      drained([a, b])
      assert Enum.map(@instances, &calls(a, &1)) == before
    end

    test "a participant whose node stops gracefully, or is killed, is pruned" do
      [a, b, c] = nodes = start_nodes(3, "web")
      start_instances(nodes)
      Enum.each(nodes, &start_membership(&1, mode: :participation))
      await_members(nodes, nodes)

      C.stop(c)
      await_members([a, b], [a, b])

      C.kill(b)
      await_members([a], [a])
      assert C.rpc(a, Drove.Membership, :members, [@membership]) == [a]
    end

    test "a participant whose Membership stops (node still up) is pruned" do
      [a, b] = nodes = start_nodes(2, "web")
      start_instances(nodes)
      Enum.each(nodes, &start_membership(&1, mode: :participation))
      await_members(nodes, nodes)

      :ok = C.rpc(b, F, :stop_membership, [@membership])
      await_members([a], [a])
      # b's instances keep the last set they were given; nobody sets them any more
      assert all_list?([b], [a, b])
    end

    test "partitions ord and cdg on one connected cluster stay isolated" do
      [o1, o2, c1, c2] = nodes = start_nodes(4, "part")
      start_instances(nodes)
      for n <- [o1, o2], do: start_membership(n, mode: :participation, partition: "ord")
      for n <- [c1, c2], do: start_membership(n, mode: :participation, partition: "cdg")

      await_members([o1, o2], [o1, o2])
      await_members([c1, c2], [c1, c2])
      assert C.mesh?(nodes)

      drained(nodes)
      assert all_list?([o1, o2], [o1, o2]) and all_list?([c1, c2], [c1, c2])

      assert C.rpc(o1, Drove.Membership, :members, [@membership]) == Enum.sort([o1, o2])
      assert C.rpc(c2, Drove.Membership, :members, [@membership]) == Enum.sort([c1, c2])
    end

    test "without :pg.monitor/2 the group is polled" do
      [a, b, c] = nodes = start_nodes(3, "poll")
      start_instances(nodes)

      for n <- nodes,
          do: start_membership(n, mode: :participation, pg_monitor: false, poll_interval: 100)

      await_members(nodes, nodes)
      :ok = C.rpc(c, F, :stop_membership, [@membership])
      await_members([a, b], [a, b])
      C.kill(b)
      await_members([a], [a])
    end
  end

  # ---------------------------------------------------------------------------
  # :auto

  describe ":auto" do
    @describetag :cluster

    test "members are all visible nodes; a killed node is dropped" do
      [a, b, c] = nodes = start_nodes(3, "auto")
      start_instances(nodes)
      Enum.each(nodes, &start_membership(&1, mode: :auto))

      # the runner is a visible node of every peer, so it is a member (as in Horde)
      await_members(nodes, [node() | nodes])
      assert C.rpc(a, Drove.Membership, :members, [@membership]) == Enum.sort([node() | nodes])

      C.kill(c)
      await_members([a, b], [node(), a, b])
    end
  end

  # ---------------------------------------------------------------------------
  # retries

  describe "instances that are down or restarting" do
    @describetag :cluster

    test "a change for a restarting instance is retried until it lands" do
      [a, b, c] = nodes = start_nodes(3, "retry")
      start_instances(nodes)
      start_membership(a, mode: :participation)
      start_membership(b, mode: :participation)
      await_members([a, b], [a, b])

      [victim | others] = @instances
      :ok = C.rpc(a, F, :kill, [victim])

      # the membership changes while the victim is down
      start_membership(c, mode: :participation)
      C.wait_until(fn -> Enum.all?(others, &(nodes_of(a, &1) == Enum.sort(nodes))) end, 10_000)
      assert C.rpc(a, Drove.Membership, :pending, [@membership]) == [victim]
      assert C.rpc(a, Process, :whereis, [victim]) == nil

      # it stays pending through retries while it is down (each retry arms a new timer)...
      for _ <- 1..2 do
        timer = C.rpc(a, :sys, :get_state, [@membership]).retry_timer
        C.wait_until(fn -> C.rpc(a, :sys, :get_state, [@membership]).retry_timer != timer end)
        assert C.rpc(a, Drove.Membership, :pending, [@membership]) == [victim]
      end

      # ...then comes back, seeded self-only, and gets the current members

      {:ok, _} = C.rpc(a, F, :start, [victim])
      C.wait_until(fn -> nodes_of(a, victim) == Enum.sort(nodes) end, 5000)
      assert C.rpc(a, Drove.Membership, :pending, [@membership]) == []
      assert [applied] = calls(a, victim)
      assert Enum.sort(applied) == Enum.sort(for n <- nodes, do: {victim, n})
    end

    test "an instance that restarts without a membership change gets the members again" do
      [a, b] = nodes = start_nodes(2, "retry")
      start_instances(nodes)
      Enum.each(nodes, &start_membership(&1, mode: :participation))
      await_members(nodes, nodes)

      instance = hd(@instances)
      :ok = C.rpc(b, F, :kill, [instance])
      {:ok, _} = C.rpc(b, F, :start, [instance])
      C.wait_until(fn -> nodes_of(b, instance) == Enum.sort(nodes) end, 5000)
      assert length(calls(b, instance)) == 1
      _ = a
    end
  end
end
