defmodule Horde.SeveralMembersTest do
  # Horde's documented layout of several members on one node (`:sup1, :sup2, :sup3` joined
  # with Horde.Cluster.set_members/2), members listed before they start, and the address
  # forms of a GenServer, all through the Horde.* names.
  use ExUnit.Case, async: false

  alias Drove.Test.{CountingWorker, Registrant}
  alias Drove.TestCluster, as: C
  alias Horde.DynamicSupervisor, as: HDS

  @moduletag :capture_log
  @sync 100

  setup ctx do
    collector = :"horde_collector_#{ctx.line}"
    Process.register(self(), collector)
    names = for x <- 1..3, do: :"#{ctx.test |> Atom.to_string() |> :erlang.phash2()}_#{x}"
    {:ok, collector: {collector, node()}, names: names}
  end

  defp starts! do
    starts = CountingWorker.drain(Process.get(:starts, %{}))
    Process.put(:starts, starts)
    starts
  end

  defp each_once?(starts, tags) do
    Enum.sort(Map.keys(starts)) == Enum.sort(tags) and
      Enum.all?(starts, fn {_, [newest | older]} ->
        Process.alive?(newest) and not Enum.any?(older, &Process.alive?/1)
      end)
  end

  defp alive_members(sup) do
    for {_, %Horde.DynamicSupervisor.Member{status: :alive}} <- :sys.get_state(sup).members_info,
        do: 1
  end

  test "three supervisors on one node: each child once, equal counts, a stop moves children",
       ctx do
    [s1, s2, s3] = sups = ctx.names

    for s <- sups do
      start_supervised!(
        {HDS, name: s, strategy: :one_for_one, delta_crdt_options: [sync_interval: @sync]},
        id: s
      )
    end

    assert :ok = Horde.Cluster.set_members(s1, sups)
    C.wait_until(fn -> Enum.all?(sups, &(length(alive_members(&1)) == 3)) end)
    assert Horde.Cluster.members(s3) == Enum.sort(for s <- sups, do: {s, node()})

    tags =
      for i <- 1..30 do
        tag = :"h#{ctx.line}_#{i}"
        {:ok, _} = HDS.start_child(s1, {CountingWorker, {tag, ctx.collector, :permanent}})
        tag
      end

    C.wait_until(fn -> Enum.all?(sups, &(HDS.count_children(&1).active == 30)) end)
    assert each_once?(starts!(), tags)
    assert Enum.all?(starts!(), fn {_, pids} -> length(pids) == 1 end)

    # the strategy spread them over the three members
    local =
      for s <- sups, do: length(DynamicSupervisor.which_children(:"#{s}.ProcessesSupervisor"))

    assert Enum.sum(local) == 30 and Enum.all?(local, &(&1 > 0))

    :ok = HDS.stop(s2)
    C.wait_until(fn -> HDS.count_children(s1).active == 30 and each_once?(starts!(), tags) end)
    total = starts!() |> Map.values() |> Enum.map(&length/1) |> Enum.sum()
    assert total == 30 + Enum.at(local, 1)
    # the surviving members at rest with equal replicas: no start can follow
    C.wait_until(fn ->
      Enum.all?([s1, s3], &Drove.Test.SupPeer.at_rest?(&1, [{s1, node()}, {s3, node()}])) and
        Drove.Test.SupPeer.digest(s1) == Drove.Test.SupPeer.digest(s3)
    end)

    assert HDS.count_children(s3).active == 30

    # terminate_child through any member, whichever runs the child
    for {_, [pid | _]} <- starts!() do
      assert :ok = HDS.terminate_child(s3, pid)
    end

    C.wait_until(fn -> HDS.count_children(s1).active == 0 end)
  end

  test "two registries on one node: an unregistered key stays gone", ctx do
    [r1, r2, _] = ctx.names

    for r <- [r1, r2] do
      start_supervised!(
        {Horde.Registry, name: r, keys: :unique, delta_crdt_options: [sync_interval: @sync]},
        id: r
      )
    end

    assert :ok = Horde.Cluster.set_members(r1, [r1, r2])
    pid = Registrant.start(r1, :k, :v)
    C.wait_until(fn -> Horde.Registry.lookup(r2, :k) == [{pid, :v}] end)

    :ok = Registrant.run(pid, fn -> Horde.Registry.unregister(r1, :k) end)
    C.wait_until(fn -> Horde.Registry.lookup(r2, :k) == [] end)

    C.consistently_through_rounds(
      fn -> Horde.Registry.lookup(r1, :k) == [] and Horde.Registry.lookup(r2, :k) == [] end,
      [r1, r2],
      &Drove.Registry.info/1
    )
  end

  test "a member named before it starts joins when it starts", ctx do
    [r1, r2, s1] = ctx.names
    start_supervised!({Horde.Registry, name: r1, keys: :unique, members: [r1, r2]}, id: r1)
    pid = Registrant.start(r1, :k, 1)
    start_supervised!({Horde.Registry, name: r2, keys: :unique, members: [r1, r2]}, id: r2)
    C.wait_until(fn -> Horde.Registry.lookup(r2, :k) == [{pid, 1}] end)

    start_supervised!({HDS, name: s1, strategy: :one_for_one, members: [s1, :not_yet]}, id: s1)
    assert :ok = Horde.Cluster.set_members(s1, [s1, :still_not_yet])
    assert {:ok, _} = HDS.start_child(s1, {CountingWorker, {:late, ctx.collector, :temporary}})
  end

  test "a supervisor is addressed as any GenServer", ctx do
    [s1, _, _] = ctx.names
    top = start_supervised!({HDS, name: s1, strategy: :one_for_one}, id: s1)
    :yes = :global.register_name({:horde_addr, ctx.line}, Process.whereis(s1))

    for {form, i} <-
          Enum.with_index([
            s1,
            {s1, node()},
            Process.whereis(s1),
            top,
            {:global, {:horde_addr, ctx.line}},
            {:via, :global, {:horde_addr, ctx.line}}
          ]) do
      assert {:ok, pid} =
               HDS.start_child(form, {CountingWorker, {:"a#{i}", ctx.collector, :temporary}})

      assert {:undefined, pid, :worker, [CountingWorker]} in HDS.which_children(form)
      assert :ok = HDS.terminate_child(form, pid)
    end
  end
end
