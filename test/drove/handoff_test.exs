defmodule Drove.HandoffTest do
  # State handoff on real peers: a handoff: true child moved by a graceful stop, by :active
  # redistribution, through a rolling deploy; the loss of either end at each step of a
  # handoff (stopped there by a test hook, see Drove.Test.HandoffPeer.install_hook/3); a
  # child terminated while it answers; a child that does not answer, one that asks to
  # restart, and a state over the size limit.
  use ExUnit.Case, async: false

  alias Drove.TestCluster, as: C
  alias Drove.Test.HandoffPeer, as: H
  alias Drove.Test.Keeper
  alias Drove.Test.SupPeer, as: P

  @moduletag :cluster
  @moduletag timeout: 240_000
  @moduletag :capture_log

  @sup DroveHandoffSup
  @deadline 20_000

  defp start_cluster(n, prefix, opts \\ []) do
    nodes = C.start_nodes(n, prefix: prefix, env: [logger: [level: :error]])
    for n <- nodes, do: start_sup(n, nodes, opts)
    await_alive(nodes)
    nodes
  end

  defp start_sup(node, nodes, opts) do
    C.rpc(node, P, :start, [@sup, [members: for(n <- nodes, do: {@sup, n})] ++ opts])
  end

  defp await_alive(nodes) do
    n = length(nodes)

    C.wait_until(
      fn ->
        Enum.all?(
          nodes,
          &(Map.values(C.rpc(&1, P, :statuses, [@sup])) == List.duplicate(:alive, n))
        )
      end,
      @deadline
    )
  end

  defp tags(prefix, range), do: for(i <- range, do: :"#{prefix}_#{i}")

  # tag => [nodes running it]
  defp placement(nodes, tags) do
    nodes
    |> Enum.flat_map(fn n -> for t <- C.rpc(n, P, :running, [tags]), do: {t, n} end)
    |> Enum.group_by(&elem(&1, 0), &elem(&1, 1))
  end

  # every tag runs on exactly one of `nodes`, and the entries on every node name that copy
  defp settled?(nodes, tags) do
    p = placement(nodes, tags)

    map_size(p) == length(tags) and Enum.all?(p, fn {_, ns} -> length(ns) == 1 end) and
      Enum.all?(nodes, fn n ->
        pids = C.rpc(n, H, :pids, [@sup])
        Enum.all?(tags, fn t -> (pid = pids[t]) && node(pid) == hd(p[t]) end)
      end)
  end

  defp await_settled(nodes, tags), do: C.wait_until(fn -> settled?(nodes, tags) end, @deadline)

  # the node the uniform strategy places a Keeper child `tag` (default spec) on, among `nodes`
  defp home(nodes, tag), do: H.home(@sup, nodes, Keeper.spec(tag))

  # `n` tags placed on `node` and `n` on `other`, whose spec is make.(tag)
  defp on_each(nodes, node, other, prefix, n, make) do
    H.placed(@sup, nodes, node, prefix, n, make) ++
      H.placed(@sup, nodes, other, prefix, n, make)
  end

  # a child's view, called through the pid its entry names on `node`
  defp get(node, tag), do: GenServer.call(C.rpc(node, H, :pids, [@sup])[tag], :get)

  defp put(node, tag, v), do: :ok = GenServer.call(C.rpc(node, H, :pids, [@sup])[tag], {:put, v})

  defp continue({:handoff_hook, _step, _node, _tag, pid, ref}), do: send(pid, {:continue, ref})

  test "a graceful stop moves each handoff child with its state, delivered once, before its entry names it" do
    [a, b, c] = nodes = start_cluster(3, "hog")
    tags = tags("hg", 1..30)
    C.rpc(a, H, :start_keepers, [@sup, tags])
    await_settled(nodes, tags)
    for t <- tags, do: put(a, t, {t, :before})

    on_c = for {t, [^c]} <- placement(nodes, tags), do: t
    assert on_c != []

    C.stop(c)

    # the moment the entries name the new copies, those copies hold their state: it was cast
    # to them before their entry was written
    await_settled([a, b], tags)

    for t <- tags do
      view = get(a, t)
      assert view.value == {t, :before}, inspect({t, view})
      assert view.delivered == if(t in on_c, do: 1, else: 0)
      refute view.late
    end

    # a restart of a moved child starts it without the state: it was delivered once
    [moved | _] = on_c
    old = C.rpc(a, H, :pids, [@sup])[moved]
    GenServer.cast(old, :crash)
    C.wait_until(fn -> C.rpc(a, H, :pids, [@sup])[moved] not in [nil, old] end, @deadline)
    assert %{value: :fresh, delivered: 0} = get(a, moved)
  end

  test ":active redistribution moves handoff children to a new member with their state" do
    [a, b] = nodes = C.start_nodes(2, prefix: "hor", env: [logger: [level: :error]])
    start_sup(a, nodes, process_redistribution: :active)

    # only a is alive: everything starts there
    C.wait_until(fn -> C.rpc(a, P, :statuses, [@sup])[a] == :alive end, @deadline)
    tags = tags("hr", 1..20)
    C.rpc(a, H, :start_keepers, [@sup, tags])
    await_settled([a], tags)
    for t <- tags, do: put(a, t, {t, :on_a})

    start_sup(b, nodes, process_redistribution: :active)
    await_alive(nodes)

    # every child the strategy now places on b has moved there
    on_b = for t <- tags, home(nodes, t) == b, do: t
    assert on_b != []

    C.wait_until(
      fn ->
        settled?(nodes, tags) and
          Enum.all?(placement(nodes, tags), fn {t, [n]} -> n == home(nodes, t) end)
      end,
      @deadline
    )

    for t <- tags do
      view = get(a, t)
      assert view.value == {t, :on_a}, inspect({t, view})
      assert view.delivered == if(t in on_b, do: 1, else: 0)
    end
  end

  test "a rolling deploy: every node stopped and restarted in turn, each child ends with its latest state" do
    nodes = start_cluster(3, "hrd")
    tags = tags("hd", 1..24)
    C.rpc(hd(nodes), H, :start_keepers, [@sup, tags])
    await_settled(nodes, tags)

    for round <- 1..2, victim <- nodes do
      survivors = nodes -- [victim]
      for t <- tags, do: put(hd(survivors), t, {t, round, victim})

      C.stop(victim)
      await_settled(survivors, tags)
      for t <- tags, do: assert(get(hd(survivors), t).value == {t, round, victim})

      C.restart(victim)
      start_sup(victim, nodes, [])
      await_alive(nodes)
      # the restarted node has every entry again
      await_settled(nodes, tags)
    end

    await_settled(nodes, tags)
    [last | _] = Enum.reverse(nodes)
    for t <- tags, do: assert(get(hd(nodes), t).value == {t, 2, last})
  end

  test "the stopping node dies before its child answered: the child restarts fresh, once" do
    [a, b, c] = nodes = start_cluster(3, "hk1")
    [tag] = tags = [:hk1_child]
    test = self()

    C.rpc(a, H, :start_keepers, [@sup, tags, {:block, test}])
    await_settled(nodes, tags)
    put(a, tag, :kept)
    [victim] = placement(nodes, tags)[tag]

    :erpc.cast(victim, :init, :stop, [])
    assert_receive {:asked, ^tag, ^victim}, @deadline
    C.kill(victim)

    survivors = [a, b, c] -- [victim]
    await_settled(survivors, tags)
    assert %{value: :fresh, delivered: 0} = get(hd(survivors), tag)
  end

  test "the stopping node dies after the answer, before it is written: the child restarts fresh" do
    [a, b, c] = nodes = start_cluster(3, "hk2")
    [tag] = tags = [:hk2_child]
    C.rpc(a, H, :start_keepers, [@sup, tags])
    await_settled(nodes, tags)
    put(a, tag, :kept)
    [victim] = placement(nodes, tags)[tag]
    C.rpc(victim, H, :install_hook, [self(), [:answered], tags])

    :erpc.cast(victim, :init, :stop, [])
    assert_receive {:handoff_hook, :answered, ^victim, ^tag, _, _}, @deadline
    C.kill(victim)

    survivors = [a, b, c] -- [victim]
    await_settled(survivors, tags)
    assert %{value: :fresh, delivered: 0} = get(hd(survivors), tag)
  end

  test "the stopping node dies once the answer reached its peers: the new instance gets the state" do
    [a, b, c] = nodes = start_cluster(3, "hk3")
    [tag] = tags = [:hk3_child]
    C.rpc(a, H, :start_keepers, [@sup, tags])
    await_settled(nodes, tags)
    put(a, tag, :kept)
    [victim] = placement(nodes, tags)[tag]
    survivors = [a, b, c] -- [victim]
    id = C.rpc(a, H, :id, [@sup, tag])
    C.rpc(victim, H, :install_hook, [self(), [:written], tags])

    :erpc.cast(victim, :init, :stop, [])
    assert_receive {:handoff_hook, :written, ^victim, ^tag, _, _}, @deadline
    # the child still runs on the victim, its entry carries the state on every survivor
    for n <- survivors, do: C.wait_until(fn -> C.rpc(n, H, :carried?, [@sup, id]) end, @deadline)
    C.kill(victim)

    await_settled(survivors, tags)
    assert %{value: :kept, delivered: 1} = get(hd(survivors), tag)
    # the claim wrote the entry without the state
    for n <- survivors, do: C.wait_until(fn -> not C.rpc(n, H, :carried?, [@sup, id]) end)
  end

  test "the new node dies before delivering: the next one gets the state" do
    [a, b, c] = nodes = start_cluster(3, "hk4")
    [tag] = tags = [:hk4_child]
    C.rpc(a, H, :start_keepers, [@sup, tags])
    await_settled(nodes, tags)
    put(a, tag, :kept)
    [old] = placement(nodes, tags)[tag]
    survivors = [a, b, c] -- [old]
    id = C.rpc(a, H, :id, [@sup, tag])
    for n <- survivors, do: C.rpc(n, H, :install_hook, [self(), [:delivering], tags])

    C.stop(old)
    assert_receive {:handoff_hook, :delivering, first, ^tag, _, _}, @deadline
    assert first in survivors
    C.kill(first)

    [last] = survivors -- [first]
    assert_receive {:handoff_hook, :delivering, ^last, ^tag, _, _} = paused, @deadline
    # the new instance runs, its state not yet cast: no entry names it yet
    assert Process.whereis(tag) == nil
    assert is_pid(C.rpc(last, Process, :whereis, [tag]))
    assert {nil, _spec, nil, :kept} = C.rpc(last, H, :raw_entry, [@sup, id])
    continue(paused)

    await_settled([last], tags)
    assert %{value: :kept, delivered: 1} = get(last, tag)
  end

  test "the new node dies after the state was delivered: the next instance starts fresh" do
    [a, b, c] = nodes = start_cluster(3, "hk5")
    [tag] = tags = [:hk5_child]
    C.rpc(a, H, :start_keepers, [@sup, tags])
    await_settled(nodes, tags)
    put(a, tag, :kept)
    [old] = placement(nodes, tags)[tag]
    survivors = [a, b, c] -- [old]

    C.stop(old)
    # both survivors' entries name the new instance: its claim dropped the state everywhere
    await_settled(survivors, tags)
    [first] = placement(survivors, tags)[tag]
    assert %{value: :kept, delivered: 1} = get(first, tag)

    C.kill(first)
    [last] = survivors -- [first]
    await_settled([last], tags)
    assert %{value: :fresh, delivered: 0} = get(last, tag)
  end

  test "a child terminated while it hands over is not brought back by its answer" do
    [a, b] = nodes = start_cluster(2, "htc")
    test = self()
    [tag] = H.placed(@sup, nodes, b, "htc", 1, &Keeper.spec(&1, {:hold_stop, test}, 60_000))
    :ok = C.rpc(a, H, :start_keepers, [@sup, [tag], {:hold_stop, test}, 60_000])
    await_settled(nodes, [tag])
    pid = C.rpc(a, H, :pids, [@sup])[tag]
    C.rpc(b, H, :install_hook, [test, [:answered], [tag]])

    # b stops; the child has answered, the answer is held before it reaches b's instance
    stopper = Task.async(fn -> C.stop(b, 60_000) end)
    assert_receive {:handoff_hook, :answered, ^b, ^tag, asker, _} = paused, @deadline

    # terminate_child from a: the child is stopping (held in its terminate) when its answer
    # reaches b's instance, which must not write the entry again
    terminator =
      Task.async(fn -> C.rpc(a, Drove.DynamicSupervisor, :terminate_child, [@sup, pid]) end)

    assert_receive {:terminating, ^tag, ^pid}, @deadline
    ref = Process.monitor(asker)
    continue(paused)
    assert_receive {:DOWN, ^ref, :process, ^asker, _}, @deadline
    # b's instance has handled the answer (sent before the asker ended) before this call
    _ = C.rpc(b, :sys, :get_state, [@sup])
    send(pid, :go)

    assert Task.await(terminator, @deadline) == :ok
    Task.await(stopper, 70_000)

    # b pushed its last writes before it stopped: the child has no entry, and runs nowhere
    refute Map.has_key?(C.rpc(a, H, :pids, [@sup]), tag)
    assert C.rpc(a, P, :running, [[tag]]) == []
  end

  test "a child that does not answer within its shutdown time, or asks to restart, moves without state" do
    [a, b] = nodes = start_cluster(2, "hto")
    silent = on_each(nodes, b, a, "hs", 3, &Keeper.spec(&1, :silent, 300))
    restart = on_each(nodes, b, a, "hx", 3, &Keeper.spec(&1, :restart))
    C.rpc(a, H, :start_keepers, [@sup, silent, :silent, 300])
    C.rpc(a, H, :start_keepers, [@sup, restart, :restart])
    tags = silent ++ restart
    await_settled(nodes, tags)
    for t <- tags, do: put(a, t, :kept)
    on_b = for {t, [^b]} <- placement(nodes, tags), do: t
    assert Enum.any?(on_b, &(&1 in silent)) and Enum.any?(on_b, &(&1 in restart))

    C.stop(b)
    await_settled([a], tags)

    for t <- tags do
      expected = if t in on_b, do: :fresh, else: :kept
      assert %{value: ^expected, delivered: 0} = get(a, t)
    end
  end

  test "a state over handoff_max_bytes is refused: the child moves without it" do
    [a, b] = nodes = start_cluster(2, "hbg", handoff_max_bytes: 10_000)
    big = on_each(nodes, b, a, "hb", 4, &Keeper.spec(&1, :big))
    small = on_each(nodes, b, a, "hm", 4, &Keeper.spec(&1))
    C.rpc(a, H, :start_keepers, [@sup, big, :big])
    C.rpc(a, H, :start_keepers, [@sup, small])
    tags = big ++ small
    await_settled(nodes, tags)
    for t <- tags, do: put(a, t, :kept)
    on_b = for {t, [^b]} <- placement(nodes, tags), do: t
    assert Enum.any?(on_b, &(&1 in big)) and Enum.any?(on_b, &(&1 in small))

    C.stop(b)
    await_settled([a], tags)

    for t <- tags do
      case {t in on_b, t in big} do
        {true, true} -> assert %{value: :fresh, delivered: 0} = get(a, t)
        {true, false} -> assert %{value: :kept, delivered: 1} = get(a, t)
        {false, _} -> assert %{value: :kept, delivered: 0} = get(a, t)
      end
    end
  end
end
