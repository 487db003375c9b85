defmodule Drove.WireTest do
  # Real wires: every distribution connection between two peers runs through a TCP proxy on
  # the runner (Drove.Test.Wire) that stalls, slows, delays or drops it. A stalled or slow
  # peer must not hold up the others; once the wire moves again everything converges.
  use ExUnit.Case, async: false

  alias Drove.Test.RegistryPeer, as: P
  alias Drove.Test.SupPeer
  alias Drove.Test.Wire
  alias Drove.TestCluster, as: C

  @moduletag :cluster
  @moduletag :capture_log
  @moduletag timeout: 300_000

  @reg :wire_registry
  @sup WireSup

  setup do
    Wire.ensure_started()
    on_exit(&Wire.reset_all/0)
  end

  defp start_cluster(n, prefix, sup? \\ false) do
    nodes = C.start_nodes(n, prefix: prefix, args: Wire.peer_args())
    members = for nd <- nodes, do: {@reg, nd}
    Enum.each(nodes, &C.rpc(&1, P, :start, [@reg, [members: members]]))

    C.wait_until(
      fn -> Enum.all?(nodes, &(length(info(&1).neighbours_up) == n - 1)) end,
      30_000
    )

    if sup?, do: start_supervisors(nodes)

    # the peers talk through the proxy, not directly
    for a <- nodes, b <- nodes, a < b, do: assert(Wire.connections(a, b) == 1)
    nodes
  end

  defp start_supervisors(nodes) do
    members = for nd <- nodes, do: {@sup, nd}
    Enum.each(nodes, &C.rpc(&1, SupPeer, :start, [@sup, [members: members]]))
    alive = List.duplicate(:alive, length(nodes))

    C.wait_until(
      fn -> Enum.all?(nodes, &(Map.values(C.rpc(&1, SupPeer, :statuses, [@sup])) == alive)) end,
      30_000
    )
  end

  # the next n {:child_started, tag, node} reports: [{tag, node}]
  defp children_started(0), do: []

  defp children_started(n) do
    receive do
      {:child_started, tag, node} -> [{tag, node} | children_started(n - 1)]
      {:child_failed, tag, result} -> flunk("start_child of #{tag}: #{inspect(result)}")
    after
      60_000 -> flunk("#{n} start_child calls still waiting")
    end
  end

  defp status(node) do
    pid = C.rpc(node, Process, :whereis, [@reg])
    {:status, status} = C.rpc(node, Process, :info, [pid, :status])
    status
  end

  defp info(node), do: C.rpc(node, Drove.Registry, :info, [@reg])
  defp found(node, prefix, range), do: C.rpc(node, P, :found, [@reg, prefix, range], 60_000)

  # A process on `node` that registers {prefix, i} with a 2 KiB value for every i, then
  # stays: tens of MiB of deltas for every neighbour.
  defp register_big(node, prefix, range) do
    C.rpc(node, Drove.Test.WirePeer, :hold, [@reg, prefix, range, 2048], 120_000)
  end

  defp isolate(victim, others, opts) do
    for o <- others, do: Wire.set_both(victim, o, opts)
  end

  defp heal_wires(victim, others), do: for(o <- others, do: Wire.reset(victim, o))

  for {fault, opts} <- [stalled: [mode: :stall], slow: [rate: 50_000]] do
    test "a #{fault} peer holds up no registration, lookup or replication among the others" do
      [a, b, c, d] = start_cluster(4, "wire_#{unquote(fault)}", true)
      isolate(d, [a, b, c], unquote(opts))

      # a's pushes to d fill the wire to d and then a's distribution buffer for d
      assert register_big(a, :big, 1..600) == 600
      assert found(a, :big, 1..600) == 600
      C.wait_until(fn -> found(b, :big, 1..600) == 600 end, 60_000)
      C.wait_until(fn -> found(c, :big, 1..600) == 600 end, 60_000)
      # the others keep registering, looking up and replicating among themselves; a's
      # registry process, which syncs with d every round, never waits on d
      assert C.rpc(b, P, :start_many, [@reg, :on_b, 1..200]) == 200
      C.wait_until(fn -> found(c, :on_b, 1..200) == 200 end, 60_000)
      assert C.rpc(c, P, :start_many, [@reg, :on_c, 1..200]) == 200
      C.wait_until(fn -> found(a, :on_c, 1..200) == 200 end, 60_000)
      # through rounds of a, each of which sends to d too
      C.consistently_through_rounds(
        fn -> status(a) != :suspended end,
        [a],
        &C.rpc(&1, Drove.Registry, :info, [@reg])
      )

      # the stalled connection to d is busy: what a sent there waits in a sender process
      if unquote(fault) == :stalled,
        do: assert(C.rpc(a, Drove.Replicator.Sender, :queued, [d]) > 0)

      # start_child from a: 60 children, about 45 placed on a, b and c; their calls return
      # while those placed on d wait, and the others see them
      prefix = "wire_#{unquote(fault)}"
      tags = for i <- 1..60, do: :"#{prefix}_#{i}"
      :ok = C.rpc(a, Drove.Test.WireSupPeer, :start_children, [@sup, prefix, 1..60, self()])
      first = children_started(30)

      for n <- [b, c] do
        C.wait_until(
          fn ->
            entries = C.rpc(n, SupPeer, :entries, [@sup])
            Enum.all?(first, fn {tag, _} -> Map.has_key?(entries, tag) end)
          end,
          60_000
        )
      end

      # the wire moves again: d gets everything, nothing is lost anywhere
      heal_wires(d, [a, b, c])
      children_started(30)

      C.wait_until(
        fn ->
          running = Enum.flat_map([a, b, c, d], &C.rpc(&1, SupPeer, :running, [tags]))
          Enum.sort(running) == Enum.sort(tags)
        end,
        60_000
      )

      for n <- [a, b, c, d] do
        C.wait_until(
          fn ->
            found(n, :big, 1..600) == 600 and found(n, :on_b, 1..200) == 200 and
              found(n, :on_c, 1..200) == 200
          end,
          120_000
        )
      end

      counts = Enum.map([a, b, c, d], &C.rpc(&1, Drove.Registry, :count, [@reg]))
      assert Enum.uniq(counts) == [1_000]
    end
  end

  test "dropped connections come back and every registration made meanwhile converges" do
    [a, b, c] = start_cluster(3, "wire_drop")
    assert C.rpc(a, P, :start_many, [@reg, :before, 1..100]) == 100
    C.wait_until(fn -> found(c, :before, 1..100) == 100 end, 30_000)

    # the wire between a and c goes down and stays down: each sees the other leave
    Wire.cut(a, c)
    C.wait_until(fn -> c not in C.rpc(a, Node, :list, []) end, 30_000)
    C.wait_until(fn -> found(c, :before, 1..100) == 0 end, 30_000)

    # both sides keep registering; b, connected to both, sees both
    assert C.rpc(a, P, :start_many, [@reg, :a_during, 1..100]) == 100
    assert C.rpc(c, P, :start_many, [@reg, :c_during, 1..100]) == 100
    C.wait_until(fn -> found(b, :a_during, 1..100) + found(b, :c_during, 1..100) == 200 end)

    # the wire comes back and the nodes reconnect (as a cluster strategy would)
    Wire.reset(a, c)
    assert C.rpc(a, Node, :connect, [c])
    assert Wire.connections(a, c) == 1

    for n <- [a, b, c] do
      C.wait_until(
        fn ->
          found(n, :before, 1..100) == 100 and found(n, :a_during, 1..100) == 100 and
            found(n, :c_during, 1..100) == 100
        end,
        60_000
      )
    end

    # the same once more with the connection dropped under a burst of registrations
    task = Task.async(fn -> C.rpc(a, P, :start_many, [@reg, :a_burst, 1..500], 60_000) end)
    Wire.drop(a, c)
    assert Task.await(task, 60_000) == 500
    C.wait_until(fn -> C.rpc(a, Node, :connect, [c]) end, 30_000)

    for n <- [a, b, c] do
      C.wait_until(fn -> found(n, :a_burst, 1..500) == 500 end, 60_000)
    end
  end

  test "two regions 50 ms apart: registrations cross, a failover runs the child exactly once" do
    nodes = C.start_nodes(4, prefix: "wire_wan", args: Wire.peer_args())
    [a, b, c, d] = nodes
    for x <- [a, b], y <- [c, d], do: Wire.set_both(x, y, latency: 50)
    members = for nd <- nodes, do: {@reg, nd}
    Enum.each(nodes, &C.rpc(&1, P, :start, [@reg, [members: members]]))
    sup_members = for nd <- nodes, do: {@sup, nd}
    Enum.each(nodes, &C.rpc(&1, SupPeer, :start, [@sup, [members: sup_members]]))

    C.wait_until(
      fn ->
        Enum.all?(nodes, fn n ->
          Map.values(C.rpc(n, SupPeer, :statuses, [@sup])) == List.duplicate(:alive, 4)
        end)
      end,
      30_000
    )

    # a registration in one region is seen in the other
    {:ok, pid} = C.rpc(a, Drove.Test.Named, :start, [@reg, :west])

    for n <- [b, c, d],
        do:
          C.wait_until(fn -> C.rpc(n, Drove.Registry, :lookup, [@reg, :west]) == [{pid, nil}] end)

    {:ok, pid} = C.rpc(d, Drove.Test.Named, :start, [@reg, :east])

    for n <- [a, b, c],
        do:
          C.wait_until(fn -> C.rpc(n, Drove.Registry, :lookup, [@reg, :east]) == [{pid, nil}] end)

    # children placed on every node; the node that runs some of them halts
    tags = C.rpc(b, SupPeer, :start_workers, [@sup, "wan", 1..40, :permanent], 60_000)
    on_a = C.rpc(a, SupPeer, :running, [tags])
    assert on_a != []
    C.kill(a)

    survivors = [b, c, d]

    running = fn ->
      survivors |> Enum.flat_map(&C.rpc(&1, SupPeer, :running, [tags])) |> Enum.frequencies()
    end

    C.wait_until(fn -> map_size(running.()) == length(tags) end, 60_000)

    # each child runs exactly once, and keeps doing so: the survivors at rest with equal
    # replicas (nothing starting, restarting or stopping, every entry owned by a survivor
    # and run by it), from where no takeover or eviction can follow
    C.wait_until(
      fn ->
        Enum.all?(survivors, &C.rpc(&1, SupPeer, :at_rest?, [@sup, survivors])) and
          length(Enum.uniq(Enum.map(survivors, &C.rpc(&1, SupPeer, :digest, [@sup])))) == 1
      end,
      60_000
    )

    assert Enum.all?(running.(), fn {_, k} -> k == 1 end) and map_size(running.()) == length(tags)
  end
end
