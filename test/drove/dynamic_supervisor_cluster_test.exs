defmodule Drove.DynamicSupervisorClusterTest do
  # Real peers: placement, failover on node loss, graceful handoff, restart rules across the
  # cluster, netsplit and heal, and bounded fan-out calls.
  use ExUnit.Case, async: false

  alias Drove.TestCluster, as: C
  alias Drove.Test.SupPeer, as: P

  @moduletag :cluster
  @moduletag timeout: 180_000
  @moduletag :capture_log

  @sup DroveClusterSup
  @deadline 20_000

  defp start_cluster(n, prefix, opts \\ []) do
    nodes = C.start_nodes(n, prefix: prefix, env: [logger: [level: :error]])
    members = for n <- nodes, do: {@sup, n}
    for n <- nodes, do: C.rpc(n, P, :start, [@sup, [members: members] ++ opts])

    C.wait_until(
      fn ->
        Enum.all?(
          nodes,
          &(Map.values(C.rpc(&1, P, :statuses, [@sup])) == List.duplicate(:alive, n))
        )
      end,
      @deadline
    )

    nodes
  end

  # tag => [nodes running it]
  defp placement(nodes, tags) do
    nodes
    |> Enum.flat_map(fn n -> for t <- C.rpc(n, P, :running, [tags]), do: {t, n} end)
    |> Enum.group_by(&elem(&1, 0), &elem(&1, 1))
  end

  defp exactly_once?(nodes, tags) do
    p = placement(nodes, tags)
    map_size(p) == length(tags) and Enum.all?(p, fn {_, ns} -> length(ns) == 1 end)
  end

  defp entries(node), do: C.rpc(node, P, :entries, [@sup])

  defp ids(node), do: Map.new(entries(node), fn {tag, {id, _}} -> {tag, id} end)

  defp start_workers(node, prefix, range, restart \\ :permanent),
    do: C.rpc(node, P, :start_workers, [@sup, prefix, range, restart], 60_000)

  # the first spec make.(i) that the uniform strategy places on `node` among `alive` (nodes)
  defp placed_on(node, alive, make) do
    members = for n <- alive, do: %Drove.DynamicSupervisor.Member{name: {@sup, n}, status: :alive}

    Enum.find_value(1..1000, fn i ->
      spec = make.(i)

      case Drove.Distribution.Uniform.choose_node(spec, members) do
        {:ok, %{name: {_, ^node}}} -> spec
        _ -> nil
      end
    end)
  end

  # a Drove.Test.Worker placed on `node` that takes `ms` to stop
  defp slow_stopping_on(node, alive, prefix, ms) do
    placed_on(node, alive, fn i ->
      tag = :"#{prefix}_#{i}"
      %{id: tag, start: {Drove.Test.Worker, :start_link, [{:slow_stop, ms}, tag]}}
    end)
  end

  # a transient Drove.Test.Worker placed on `node`
  defp transient_on(node, alive, prefix) do
    placed_on(node, alive, fn i ->
      tag = :"#{prefix}_#{i}"
      %{id: tag, start: {Drove.Test.Worker, :start_link, [tag]}, restart: :transient}
    end)
  end

  # The positive barrier for "nothing more happens": every one of `nodes` is at rest with
  # those nodes alive (nothing starting, restarting or stopping, every entry owned by one of
  # them and run by its owner: SupPeer.at_rest?/2) and all replicas are equal. From there
  # no child is taken over, evicted or restarted until something changes.
  defp await_rest(nodes) do
    C.wait_until(
      fn ->
        Enum.all?(nodes, &C.rpc(&1, P, :at_rest?, [@sup, nodes])) and
          length(Enum.uniq(Enum.map(nodes, &C.rpc(&1, P, :digest, [@sup])))) == 1
      end,
      @deadline
    )
  end

  # child `tag` has ended for good: no entry on any node, and, the cluster at rest, it runs
  # nowhere (with no entry anywhere nothing can start it again)
  defp assert_ended_everywhere(nodes, tag) do
    C.wait_until(fn -> Enum.all?(nodes, &(entries(&1)[tag] == nil)) end, @deadline)
    await_rest(nodes)
    assert Enum.all?(nodes, &(entries(&1)[tag] == nil))
    assert placement(nodes, [tag]) == %{}
  end

  # waits until `node`'s DynamicSupervisor is inside a child's start (proc_lib's sync start)
  defp await_starting(node) do
    procsup = C.rpc(node, Process, :whereis, [Drove.DynamicSupervisor.Tree.procsup(@sup)])

    C.wait_until(
      fn ->
        {:current_function, {m, f, _}} = C.rpc(node, Process, :info, [procsup, :current_function])
        m == :proc_lib and String.starts_with?(Atom.to_string(f), "sync_start")
      end,
      @deadline
    )
  end

  # a child placed on `node` whose start keeps that node's DynamicSupervisor busy for 3 s
  defp block_starts(node, alive) do
    blocker =
      placed_on(node, alive, fn i ->
        tag = :"block_#{i}"
        %{id: tag, start: {Drove.Test.Worker, :start_link, [{:sleep_on, node, 3000}, tag]}}
      end)

    task =
      Task.async(fn -> C.rpc(node, Drove.DynamicSupervisor, :start_child, [@sup, blocker]) end)

    await_starting(node)
    task
  end

  defp await_entries(nodes, count) do
    C.wait_until(fn -> Enum.all?(nodes, &(map_size(entries(&1)) == count)) end, @deadline)
  end

  test "1,000 children spread near-uniformly; a killed node's children run again once, same ids" do
    [a, b, c] = nodes = start_cluster(3, "dsk")

    # started through every node
    tags =
      Enum.flat_map(Enum.zip(nodes, [1..333, 1..333, 1..334]), fn {n, range} ->
        start_workers(n, "k_#{n}", range)
      end)

    await_entries(nodes, 1000)
    assert exactly_once?(nodes, tags)

    counts = placement(nodes, tags) |> Enum.frequencies_by(fn {_, [n]} -> n end)
    # A third is 333. The node names (so the ring) are new in each run: a member's share of a
    # 3 x 128-point ring has a relative standard deviation near 9%, and 1,000 draws add about
    # 4.5%, so +-40% (200..467) is beyond 3.5 standard deviations; an unfair placement (one
    # node taking all, or none) is far outside it.
    for n <- nodes, do: assert(counts[n] in 200..467, "#{n}: #{counts[n]} of 1000")

    before = ids(a)
    assert map_size(before) == 1000
    on_c = for {t, [^c]} <- placement(nodes, tags), do: t

    C.kill(c)

    C.wait_until(fn -> exactly_once?([a, b], tags) end, @deadline)
    await_rest([a, b])
    assert exactly_once?([a, b], tags)

    # every child of c runs on a survivor under its old id
    for n <- [a, b] do
      C.wait_until(fn -> ids(n) == before end, @deadline)
      assert Enum.all?(entries(n), fn {_, {_, owner}} -> owner in [a, b] end)
    end

    assert length(on_c) > 0
    assert C.rpc(a, Drove.DynamicSupervisor, :count_children, [@sup]).active == 1000
  end

  test "a graceful stop hands every child of the node to the survivors" do
    [a, b, c] = nodes = start_cluster(3, "dsg")
    tags = start_workers(a, "g", 1..300)
    await_entries(nodes, 300)
    before = ids(a)
    on_c = for {t, [^c]} <- placement(nodes, tags), do: t
    assert on_c != []

    C.stop(c)

    C.wait_until(fn -> exactly_once?([a, b], tags) end, @deadline)
    for n <- [a, b], do: C.wait_until(fn -> ids(n) == before end, @deadline)
    await_rest([a, b])
    assert exactly_once?([a, b], tags)
  end

  test "a member whose instance stopped is :dead for the others and is never chosen" do
    [a, b] = start_cluster(2, "dss")
    C.rpc(b, P, :stop, [@sup])
    C.wait_until(fn -> C.rpc(a, P, :statuses, [@sup])[b] == :dead end, @deadline)

    tags = start_workers(a, "s", 1..50)
    assert C.rpc(a, P, :running, [tags]) == tags
  end

  test "a stopping member is :shutting_down while its children stop, takes no new child, then hands them over" do
    [a, b] = nodes = start_cluster(2, "dsh")

    # a child placed on b that takes 1.5 s to stop
    spec = slow_stopping_on(b, nodes, "slowstop", 1500)

    [_, tag] = elem(spec.start, 2)
    {:ok, pid} = C.rpc(a, Drove.DynamicSupervisor, :start_child, [@sup, spec])
    assert node(pid) == b

    stopper = Task.async(fn -> C.rpc(b, P, :stop, [@sup], 30_000) end)
    C.wait_until(fn -> C.rpc(a, P, :statuses, [@sup])[b] == :shutting_down end, @deadline)

    # while b shuts down, new children go to a only
    more = start_workers(a, "h", 1..20)
    assert C.rpc(a, P, :running, [more]) == more

    Task.await(stopper, 30_000)
    C.wait_until(fn -> C.rpc(a, P, :running, [[tag]]) == [tag] end, @deadline)
    # a learns that b's instance has gone from its monitor, which may come after the
    # hand-over's entry (found on a loaded machine): wait for it
    C.wait_until(fn -> C.rpc(a, P, :statuses, [@sup])[b] == :dead end, @deadline)
  end

  test "a child evicted for another claim, whose entry comes back to its node while it stops, runs again" do
    [a, b] = nodes = start_cluster(2, "dse")

    # a child placed on a that takes 2 s to stop
    spec = slow_stopping_on(a, nodes, "evict", 2000)

    [_, tag] = elem(spec.start, 2)
    {:ok, pid} = C.rpc(a, Drove.DynamicSupervisor, :start_child, [@sup, spec])
    await_entries(nodes, 1)

    # a sees a claim by b (written in b's replica behind its instance's back): a evicts its
    # copy, which takes 2 s to stop
    C.rpc(b, P, :forge_owner, [@sup, tag, b])
    C.wait_until(fn -> entries(a)[tag] |> elem(1) == b end, @deadline)

    # then the entry is handed over (owner nil) while a's copy still stops: a, where it still
    # runs, takes the entry back. When the copy has stopped the entry names a, and a must
    # hand it over again, or nobody ever runs the child (others see its owner alive).
    C.rpc(b, P, :forge_owner, [@sup, tag, nil])

    C.wait_until(
      fn ->
        case placement(nodes, [tag]) do
          %{^tag => [n]} -> C.rpc(n, Process, :whereis, [tag]) != pid
          _ -> false
        end
      end,
      @deadline
    )

    C.wait_until(
      fn -> Enum.all?(nodes, &match?({_, owner} when owner != nil, entries(&1)[tag])) end,
      @deadline
    )

    assert exactly_once?(nodes, [tag])
  end

  test "a transient child that ends normally while its eviction waits is gone everywhere" do
    [a, b] = nodes = start_cluster(2, "dsv")

    spec = transient_on(a, nodes, "vict")

    [tag] = elem(spec.start, 2)
    {:ok, pid} = C.rpc(a, Drove.DynamicSupervisor, :start_child, [@sup, spec])
    await_entries(nodes, 1)

    # a's DynamicSupervisor is kept busy starting another child, so the eviction below
    # (DynamicSupervisor.terminate_child) waits behind it
    starting = block_starts(a, nodes)

    # a claim by b shows on a (a evicts its copy; the stop waits), then a hand-over (a takes
    # the entry back, its copy still runs)
    C.rpc(b, P, :forge_owner, [@sup, tag, b])
    C.wait_until(fn -> entries(a)[tag] |> elem(1) == b end, @deadline)
    C.rpc(b, P, :forge_owner, [@sup, tag, nil])
    C.wait_until(fn -> entries(a)[tag] |> elem(1) == a end, @deadline)

    # the child ends normally before the eviction reaches it: it has ended, for good
    C.rpc(a, GenServer, :cast, [pid, :stop_normal])
    assert {:ok, _} = Task.await(starting, 30_000)
    assert_ended_everywhere(nodes, tag)
  end

  test "a transient child that exits normally is not restarted anywhere; a crash restarts it in place" do
    [a, b, c] = nodes = start_cluster(3, "dst")
    tags = start_workers(a, "t", 1..30, :transient)
    await_entries(nodes, 30)

    [{t1, [n1]}, {t2, [n2]} | _] =
      placement(nodes, tags) |> Enum.sort() |> Enum.map(fn {t, ns} -> {t, ns} end)

    pid1 = C.rpc(n1, Process, :whereis, [t1])
    C.rpc(n1, GenServer, :cast, [pid1, :crash])
    C.wait_until(fn -> C.rpc(n1, Process, :whereis, [t1]) not in [nil, pid1] end, @deadline)

    pid2 = C.rpc(n2, Process, :whereis, [t2])
    C.rpc(n2, GenServer, :cast, [pid2, :stop_normal])
    for n <- nodes, do: C.wait_until(fn -> not Map.has_key?(entries(n), t2) end, @deadline)

    # not even when its node then goes away
    if n2 != a, do: C.kill(n2)
    survivors = Enum.filter([a, b, c], &(&1 in C.nodes()))
    C.wait_until(fn -> exactly_once?(survivors, tags -- [t2]) end, @deadline)
    await_rest(survivors)
    assert placement(survivors, [t2]) == %{}
    assert Enum.all?(survivors, &(not Map.has_key?(entries(&1), t2)))
  end

  test "after a netsplit heals, each child id runs exactly once and none is lost" do
    [a, b, c] = nodes = start_cluster(3, "dsn")
    tags = start_workers(a, "n", 1..200)
    await_entries(nodes, 200)
    before = ids(a)

    C.partition([[a, b], [c]])
    # each side takes over the other side's children
    C.wait_until(fn -> map_size(placement([a, b], tags)) == 200 end, @deadline)
    C.wait_until(fn -> map_size(placement([c], tags)) == 200 end, @deadline)

    # new children on each side during the split
    more_ab = start_workers(a, "nab", 1..20)
    more_c = start_workers(c, "nc", 1..20)

    C.heal(nodes)
    all = tags ++ more_ab ++ more_c
    C.wait_until(fn -> exactly_once?(nodes, all) end, @deadline)
    await_rest(nodes)
    assert exactly_once?(nodes, all)

    for n <- nodes do
      C.wait_until(
        fn -> Map.take(ids(n), tags) == before and map_size(ids(n)) == 240 end,
        @deadline
      )
    end
  end

  test "which_children answers within its bound while one member does not" do
    [a, b, c] = nodes = start_cluster(3, "dsw")
    tags = start_workers(a, "w", 1..60)
    await_entries(nodes, 60)
    on_c = length(for {_, [^c]} <- placement(nodes, tags), do: 1)

    procsup = :"#{@sup}.ProcessesSupervisor"
    C.rpc(c, :sys, :suspend, [procsup])

    {micros, children} =
      :timer.tc(fn -> C.rpc(a, Drove.DynamicSupervisor, :which_children, [@sup], 30_000) end)

    assert length(children) == 60 - on_c
    assert micros < 15_000_000

    C.rpc(c, :sys, :resume, [procsup])
    assert length(C.rpc(b, Drove.DynamicSupervisor, :which_children, [@sup])) == 60
  end

  test "start_child from any node; terminate_child of a child on another node" do
    [a, b, _c] = nodes = start_cluster(3, "dsx")
    tags = start_workers(b, "x", 1..30)
    await_entries(nodes, 30)

    {t, [owner]} = placement(nodes, tags) |> Enum.find(fn {_, [n]} -> n != a end)
    pid = C.rpc(owner, Process, :whereis, [t])
    assert :ok = C.rpc(a, Drove.DynamicSupervisor, :terminate_child, [@sup, pid])
    assert {:error, :not_found} = C.rpc(a, Drove.DynamicSupervisor, :terminate_child, [@sup, pid])
    for n <- nodes, do: C.wait_until(fn -> map_size(entries(n)) == 29 end, @deadline)
    await_rest(nodes)
    assert placement(nodes, [t]) == %{}
  end

  test "start_child to a node that dies during the child's init places the child again" do
    [a, b, c] = nodes = start_cluster(3, "dsd")

    spec =
      placed_on(c, nodes, fn i ->
        tag = :"slow_#{i}"
        %{id: tag, start: {Drove.Test.Worker, :start_link, [{:sleep_on, c, 60_000}, tag]}}
      end)

    [_, tag] = elem(spec.start, 2)

    task =
      Task.async(fn -> C.rpc(a, Drove.DynamicSupervisor, :start_child, [@sup, spec], 60_000) end)

    C.wait_until(fn -> is_pid(C.rpc(c, Process, :whereis, [tag])) end, @deadline)

    C.kill(c)
    assert {:ok, pid} = Task.await(task, 30_000)
    assert node(pid) in [a, b]
    await_rest([a, b])
    assert placement([a, b], [tag]) == %{tag => [node(pid)]}
  end

  test "process_redistribution: :active moves children to a member that joins; :passive does not" do
    for {mode, prefix} <- [active: "dra", passive: "drp"] do
      [a, b] = nodes = C.start_nodes(2, prefix: prefix, env: [logger: [level: :error]])
      members = for n <- nodes, do: {@sup, n}
      opts = [members: members, process_redistribution: mode]
      C.rpc(a, P, :start, [@sup, opts])
      C.wait_until(fn -> C.rpc(a, P, :statuses, [@sup])[a] == :alive end, @deadline)
      tags = start_workers(a, "r", 1..100)
      assert C.rpc(a, P, :running, [tags]) == tags

      C.rpc(b, P, :start, [@sup, opts])
      C.wait_until(fn -> C.rpc(a, P, :statuses, [@sup])[b] == :alive end, @deadline)

      case mode do
        :active ->
          # the ring sends about half of them to b; each runs once, under its id
          C.wait_until(
            fn -> exactly_once?(nodes, tags) and C.rpc(b, P, :running, [tags]) != [] end,
            @deadline
          )

          C.wait_until(fn -> ids(a) == ids(b) and map_size(ids(b)) == 100 end, @deadline)
          on_b = length(C.rpc(b, P, :running, [tags]))
          assert on_b in 25..75

        :passive ->
          # each member's periodic rebalance runs on its sync ticks: through two rounds of
          # both, nothing moves
          C.wait_until(fn -> C.rpc(b, P, :statuses, [@sup])[a] == :alive end, @deadline)

          C.consistently_through_rounds(
            fn -> C.rpc(a, P, :running, [tags]) == tags end,
            nodes,
            &C.rpc(&1, GenServer, :call, [@sup, :info])
          )
      end

      Enum.each(nodes, &C.kill/1)
    end
  end

  test "a transient child that ends normally while its move to a joining member waits is gone everywhere" do
    [a, b] = nodes = C.start_nodes(2, prefix: "drw", env: [logger: [level: :error]])
    opts = [members: for(n <- nodes, do: {@sup, n}), process_redistribution: :active]
    C.rpc(a, P, :start, [@sup, opts])
    C.wait_until(fn -> C.rpc(a, P, :statuses, [@sup])[a] == :alive end, @deadline)

    # a child that runs on a while b is down, and belongs on b once b is up
    spec = transient_on(b, nodes, "move")

    [tag] = elem(spec.start, 2)
    {:ok, pid} = C.rpc(a, Drove.DynamicSupervisor, :start_child, [@sup, spec])
    assert node(pid) == a

    # b joins while a's DynamicSupervisor is busy: a's stop of the child for its move waits
    starting = block_starts(a, [a])
    C.rpc(b, P, :start, [@sup, opts])
    C.wait_until(fn -> C.rpc(a, :sys, :get_state, [@sup]).stopping != %{} end, @deadline)

    # the child ends normally before the stop reaches it: it has ended, for good
    C.rpc(a, GenServer, :cast, [pid, :stop_normal])
    assert {:ok, _} = Task.await(starting, 30_000)
    assert_ended_everywhere(nodes, tag)
  end
end
