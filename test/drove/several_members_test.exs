defmodule Drove.SeveralMembersTest do
  # Several members of one registry or supervisor on the same node (Horde's `:reg1, :reg2`
  # layout joined with set_members), members that are named but not running, and a mixed
  # layout of several members on several real nodes, with kills and graceful stops.
  use ExUnit.Case, async: false

  alias Drove.DynamicSupervisor, as: DS
  alias Drove.Registry, as: Reg
  alias Drove.Test.{CountingWorker, Registrant, SupPeer}
  alias Drove.TestCluster, as: C

  @moduletag :capture_log
  # every "nothing happens" check below watches several of these
  @sync 100

  setup ctx do
    collector = :"drove_collector_#{ctx.line}"
    Process.register(self(), collector)
    {:ok, collector: {collector, node()}, names: fn prefix -> names(prefix, ctx.line) end}
  end

  defp names(prefix, line), do: for(x <- ~w(a b c), do: :"#{prefix}_#{line}_#{x}")

  defp start_sups(names, members \\ nil) do
    for n <- names do
      opts = [name: n, strategy: :one_for_one, members: members || names, sync_interval: @sync]
      # temporary: a member the test kills stays down (a restarted member would hand back
      # the children it owned while the others take them over, and start some twice)
      start_supervised!(Supervisor.child_spec({DS, opts}, id: n, restart: :temporary))
    end
  end

  defp start_regs(names, members \\ nil) do
    for n <- names do
      opts = [name: n, keys: :unique, members: members || names, sync_interval: @sync]
      start_supervised!({Reg, opts}, id: n)
    end
  end

  defp all_alive?(sup, count), do: SupPeer.all_alive?(sup, count)

  defp active(sup), do: DS.count_children(sup).active

  # Every start reported so far in this test: %{tag => [pid, ...]}, newest first.
  defp starts! do
    starts = CountingWorker.drain(Process.get(:starts, %{}))
    Process.put(:starts, starts)
    starts
  end

  defp start_count, do: starts!() |> Map.values() |> Enum.map(&length/1) |> Enum.sum()

  # Nothing starts again: once the members `alive` ({name, node}) are at rest with equal
  # replicas (nothing starting, restarting or stopping, every entry owned by one of them and
  # run by it: SupPeer.at_rest?/2), no start, takeover or eviction can follow; and none
  # came meanwhile.
  defp no_more_starts(alive) do
    total = start_count()

    C.wait_until(fn ->
      Enum.all?(alive, fn {sup, n} -> C.rpc(n, SupPeer, :at_rest?, [sup, alive]) end) and
        length(Enum.uniq(for {sup, n} <- alive, do: C.rpc(n, SupPeer, :digest, [sup]))) == 1
    end)

    assert start_count() == total
  end

  # Every tag's newest start is alive and every earlier one is dead: each child runs once.
  defp each_once?(starts, tags) do
    Enum.sort(Map.keys(starts)) == Enum.sort(tags) and
      Enum.all?(starts, fn {_tag, [newest | older]} ->
        alive?(newest) and not Enum.any?(older, &alive?/1)
      end)
  end

  defp alive?(pid) when node(pid) == node(), do: Process.alive?(pid)

  defp alive?(pid) do
    C.rpc(node(pid), Process, :alive?, [pid])
  catch
    _, _ -> false
  end

  # The tags started again since `before` (each exactly once more, or it fails).
  defp restarted(before, now) do
    for {tag, pids} <- now, length(pids) > length(Map.get(before, tag, [])), into: MapSet.new() do
      1 = length(pids) - length(Map.get(before, tag, []))
      tag
    end
  end

  # The tags whose newest pid (in `before`) is one of a DynamicSupervisor's `children`.
  defp ran_under(before, children) do
    pids = MapSet.new(for {_, pid, _, _} <- children, do: pid)
    for {tag, [newest | _]} <- before, MapSet.member?(pids, newest), into: MapSet.new(), do: tag
  end

  defp start_children(sups, prefix, count, collector) do
    for i <- 1..count do
      tag = :"#{prefix}_#{i}"
      sup = Enum.at(sups, rem(i, length(sups)))
      {:ok, _} = DS.start_child(sup, {CountingWorker, {tag, collector, :permanent}})
      tag
    end
  end

  describe "three supervisor members on one node" do
    test "each child starts once, counts agree, stop and kill move children once", ctx do
      sups = [a, b, c] = ctx.names.(:ds)
      start_sups(sups)
      C.wait_until(fn -> Enum.all?(sups, &all_alive?(&1, 3)) end)

      tags = start_children(sups, "w#{ctx.line}", 30, ctx.collector)
      C.wait_until(fn -> Enum.all?(sups, &(active(&1) == 30)) end)
      starts = starts!()
      assert Enum.all?(starts, fn {_, pids} -> length(pids) == 1 end)
      assert each_once?(starts, tags)
      # no restart storm
      no_more_starts(for s <- sups, do: {s, node()})

      assert Enum.map(sups, &length(DS.which_children(&1))) == [30, 30, 30]
      assert Enum.map(sups, &DS.count_children/1) |> Enum.uniq() |> length() == 1

      # a graceful stop of one member hands its children to the other two, each once
      local_b = DynamicSupervisor.which_children(:"#{b}.ProcessesSupervisor")
      assert local_b != [] and length(local_b) < 30
      before = starts!()
      :ok = stop_supervised(b)
      C.wait_until(fn -> active(a) == 30 and active(c) == 30 end)
      C.wait_until(fn -> each_once?(starts!(), tags) end)
      assert restarted(before, starts!()) == ran_under(before, local_b)

      # a killed member's children run again on the survivor, each once
      local_c = DynamicSupervisor.which_children(:"#{c}.ProcessesSupervisor")
      before = starts!()
      Process.exit(Process.whereis(:"#{c}.Supervisor"), :kill)

      C.wait_until(fn ->
        active(a) == 30 and each_once?(starts!(), tags) and
          restarted(before, starts!()) == ran_under(before, local_c)
      end)

      no_more_starts([{a, node()}])
      assert active(a) == 30
    end

    test "terminate_child and which_children reach the member that runs the child", ctx do
      sups = [a, _b, c] = ctx.names.(:dt)
      start_sups(sups)
      C.wait_until(fn -> Enum.all?(sups, &all_alive?(&1, 3)) end)
      tags = start_children(sups, "t#{ctx.line}", 9, ctx.collector)
      C.wait_until(fn -> active(a) == 9 end)
      starts = starts!()

      # every child can be terminated through any member
      for {_tag, [pid]} <- starts do
        assert :ok = DS.terminate_child(c, pid)
        refute Process.alive?(pid)
        assert {:error, :not_found} = DS.terminate_child(a, pid)
      end

      C.wait_until(fn -> Enum.all?(sups, &(active(&1) == 0)) end)
      assert length(tags) == 9
    end
  end

  describe "three registry members on one node" do
    test "an unregistered key stays gone on every member", ctx do
      regs = [a, b, c] = ctx.names.(:rg)
      start_regs(regs)
      pid = Registrant.start(a, :k, :v)
      C.wait_until(fn -> Enum.all?(regs, &(Reg.lookup(&1, :k) == [{pid, :v}])) end)
      assert [{:k, {^a, _}, {^pid, :v}}] = :ets.lookup(Reg.keys_table(b), :k)

      :ok = Registrant.run(pid, fn -> Reg.unregister(a, :k) end)
      C.wait_until(fn -> Enum.all?(regs, &(Reg.lookup(&1, :k) == [])) end)

      C.consistently_through_rounds(
        fn -> Enum.all?(regs, &(Reg.lookup(&1, :k) == [])) end,
        regs,
        &Reg.info/1
      )

      # and it can be registered again, through another member
      pid2 = Registrant.start(c, :k, :w)
      C.wait_until(fn -> Enum.all?(regs, &(Reg.lookup(&1, :k) == [{pid2, :w}])) end)
    end

    test "a member that stops takes down only the processes registered through it", ctx do
      regs = [a, b, c] = ctx.names.(:rs)
      start_regs(regs)
      via_a = Registrant.start(a, :ka, 1)
      via_b = Registrant.start(b, :kb, 2)

      C.wait_until(fn ->
        Enum.all?(regs, &(length(Reg.select(&1, [{{:_, :_, :_}, [], [:"$_"]}])) == 2))
      end)

      ref = Process.monitor(via_b)
      :ok = stop_supervised(b)
      assert_receive {:DOWN, ^ref, :process, ^via_b, :shutdown}
      C.wait_until(fn -> Reg.lookup(a, :kb) == [] and Reg.lookup(c, :kb) == [] end)

      assert Process.alive?(via_a)

      C.consistently_through_rounds(
        fn -> Reg.lookup(c, :ka) == [{via_a, 1}] end,
        [a, c],
        &Reg.info/1
      )

      # killed rather than stopped: the same, by the guard
      ref = Process.monitor(via_a)
      Process.exit(Process.whereis(:"#{a}.Supervisor"), :kill)
      assert_receive {:DOWN, ^ref, :process, ^via_a, :killed}
      C.wait_until(fn -> Reg.lookup(c, :ka) == [] end)
    end

    test "the same key through two members: one wins, the loser's member tells it", ctx do
      regs = [a, b, _c] = ctx.names.(:rc)
      start_regs(regs)
      pid = Registrant.start(a, :k, 1)

      # b already knows the key, so a second registration through it is refused at once
      C.wait_until(fn -> Reg.lookup(b, :k) == [{pid, 1}] end)
      parent = self()
      other = spawn(fn -> send(parent, {:result, Reg.register(b, :k, 2)}) end)
      assert_receive {:result, {:error, {:already_registered, ^pid}}}
      refute Process.alive?(other)
    end
  end

  # The member left alone has handled everything the stopped one sent it (its goodbye, its
  # monitor's :DOWN: a call's answer comes after them) and then three sync ticks, each forced
  # and waited for (a tick re-monitors the neighbours that are down, which is where a member
  # named but not running used to raise): it is still the process it was, in the same tree.
  defp survives_ticks(name, tree, instance) do
    for _ <- 1..3 do
      send(instance, :sync_tick)
      _ = :sys.get_state(instance)
    end

    assert Process.whereis(name) == instance
    assert Process.whereis(:"#{name}.Supervisor") == tree
  end

  describe "members that are named but not running" do
    test "a registry starts and takes members that are not up yet; they join later", ctx do
      [a, b, c] = ctx.names.(:rn)
      ghost = {c, :"nowhere@127.0.0.1"}
      [pa] = start_regs([a], [a, b, ghost])
      pid = Registrant.start(a, :k, 1)
      assert :ok = Drove.Cluster.set_members(a, [a, b, ghost, :not_a_member_yet])

      start_regs([b], [a, b])
      C.wait_until(fn -> Reg.lookup(b, :k) == [{pid, 1}] end)

      # the other member stopping does not disturb this one
      ia = Process.whereis(a)
      :ok = stop_supervised(b)
      survives_ticks(a, pa, ia)
      assert Reg.lookup(a, :k) == [{pid, 1}]
    end

    test "a supervisor starts and takes members that are not up yet; they join later", ctx do
      [a, b, c] = ctx.names.(:sn)
      [pa] = start_sups([a], [a, b, {c, :"nowhere@127.0.0.1"}])
      C.wait_until(fn -> SupPeer.status(a, {a, node()}) == :alive end)
      assert :ok = Drove.Cluster.set_members(a, [a, b, {c, :"nowhere@127.0.0.1"}])
      [tag] = start_children([a], "n#{ctx.line}", 1, ctx.collector)

      start_sups([b], [a, b])

      C.wait_until(fn ->
        SupPeer.status(a, {b, node()}) == :alive and SupPeer.status(b, {a, node()}) == :alive
      end)

      C.wait_until(fn -> active(b) == 1 end)

      ia = Process.whereis(a)
      :ok = stop_supervised(b)
      survives_ticks(a, pa, ia)
      assert %{^tag => [_]} = starts!()
      assert active(a) == 1
    end
  end

  describe "two members on each of two nodes" do
    @describetag :cluster
    test "children once, counts equal on every member, through a stop and a kill", ctx do
      [n1, n2] = C.start_nodes(2, apps: [:drove])
      names = [x, y] = Enum.take(ctx.names.(:mx), 2)
      members = for n <- [n1, n2], name <- names, do: {name, n}

      for n <- [n1, n2], name <- names do
        C.rpc(n, SupPeer, :start, [name, [members: members, sync_interval: @sync]])
      end

      C.wait_until(fn ->
        Enum.all?(for n <- [n1, n2], name <- names, do: C.rpc(n, SupPeer, :all_alive?, [name, 4]))
      end)

      tags =
        for i <- 1..20 do
          tag = :"mx#{ctx.line}_#{i}"
          node = if rem(i, 2) == 0, do: n1, else: n2
          name = if rem(i, 3) == 0, do: x, else: y
          spec = {CountingWorker, {tag, ctx.collector, :permanent}}
          {:ok, _} = C.rpc(node, DS, :start_child, [name, spec])
          tag
        end

      counts = fn ->
        for n <- [n1, n2], name <- names, do: C.rpc(n, DS, :count_children, [name]).active
      end

      C.wait_until(fn -> counts.() == [20, 20, 20, 20] end)
      assert each_once?(starts!(), tags)

      # a graceful stop of one member, then the loss of a whole node
      :ok = C.rpc(n1, SupPeer, :stop, [x])

      C.wait_until(fn ->
        Enum.all?(
          for(n <- [n2], name <- names, do: C.rpc(n, DS, :count_children, [name]).active == 20)
        )
      end)

      C.kill(n1)

      C.wait_until(fn ->
        Enum.map(names, &C.rpc(n2, DS, :count_children, [&1]).active) == [20, 20] and
          each_once?(starts!(), tags)
      end)

      no_more_starts(for name <- names, do: {name, n2})
      assert Enum.all?(starts!(), fn {_, [newest | _]} -> node(newest) == n2 end)
    end
  end
end
