defmodule Drove.TelemetryClusterTest do
  # The events that need several nodes, seen through the test-only :telemetry stand-in on
  # real peers: each peer forwards its events here.
  use ExUnit.Case, async: false

  alias Drove.TestCluster, as: C
  alias Drove.Test.{Named, SupPeer}
  alias Drove.Test.FakeInstance, as: F
  alias Drove.Test.RegistryPeer, as: P
  alias Drove.Test.Telemetry, as: T

  @moduletag :cluster
  @moduletag timeout: 180_000

  @reg :telemetry_registry
  @sup :telemetry_sup

  defp forward(nodes, events), do: Enum.each(nodes, &C.rpc(&1, T, :forward, [events, self()]))

  defp receive_events(event, n, acc \\ [])
  defp receive_events(_event, 0, acc), do: Enum.reverse(acc)

  defp receive_events(event, n, acc) do
    receive do
      {:telemetry, ^event, measurements, metadata} ->
        receive_events(event, n - 1, [{measurements, metadata} | acc])
    after
      30_000 -> flunk("#{n} more #{inspect(event)} events expected, got #{inspect(acc)}")
    end
  end

  test "a registration that loses a conflict after a partition heals" do
    [a, b] = nodes = C.start_nodes(2)
    for n <- nodes, do: C.rpc(n, P, :start, [@reg, [members: for(m <- nodes, do: {@reg, m})]])
    forward(nodes, [[:drove, :registry, :conflict]])
    C.partition([[a], [b]])
    {:ok, on_a} = C.rpc(a, Named, :start, [@reg, :contested])
    {:ok, on_b} = C.rpc(b, Named, :start, [@reg, :contested])
    C.heal(nodes)

    [{%{count: 1}, meta}] = receive_events([:drove, :registry, :conflict], 1)
    assert %{registry: @reg, key: :contested} = meta
    assert Enum.sort([meta.loser, meta.winner]) == Enum.sort([on_a, on_b])

    C.wait_until(fn ->
      C.rpc(a, Drove.Registry, :lookup, [@reg, :contested]) == [{meta.winner, nil}]
    end)
  end

  test "membership changes, handoff on a graceful stop, failover on a node's loss" do
    [a, b] = nodes = C.start_nodes(2)
    members = for n <- nodes, do: {@sup, n}
    forward([a], [[:drove, :cluster, :members]])
    for n <- nodes, do: C.rpc(n, SupPeer, :start, [@sup, [members: members]])

    # a's instance starts with both members
    assert [{%{members: 2, added: 2, removed: 0}, %{instance: @sup} = meta}] =
             receive_events([:drove, :cluster, :members], 1)

    assert Enum.sort(meta.added) == Enum.sort(members)

    forward([a], [[:drove, :supervisor, :handoff], [:drove, :supervisor, :failover]])
    tags = C.rpc(a, SupPeer, :start_workers, [@sup, "handed", 1..20, :permanent])
    on_b = C.rpc(b, SupPeer, :running, [tags])
    assert on_b != [] and on_b != tags

    # b stops gracefully: a starts each of b's children as a handoff
    :ok = C.rpc(b, SupPeer, :stop, [@sup])
    handoffs = receive_events([:drove, :supervisor, :handoff], length(on_b))
    assert Enum.all?(handoffs, &match?({%{count: 1}, %{supervisor: @sup}}, &1))
    C.wait_until(fn -> C.rpc(a, SupPeer, :running, [tags]) == tags end)

    # b comes back and gets new children; then it is lost: a starts them as a failover
    C.rpc(b, SupPeer, :start, [@sup, [members: members]])
    more = C.rpc(a, SupPeer, :start_workers, [@sup, "failed", 1..20, :permanent])
    on_b = C.rpc(b, SupPeer, :running, [more])
    assert on_b != []
    C.kill(b)
    failovers = receive_events([:drove, :supervisor, :failover], length(on_b))
    assert Enum.all?(failovers, &match?({%{count: 1}, %{supervisor: @sup, from: {@sup, ^b}}}, &1))
    C.wait_until(fn -> C.rpc(a, SupPeer, :running, [more]) == more end, 15_000)
    # a's instance emits these events: its answer to a call comes after any it sent before
    _ = :sys.get_state({@sup, a})
    refute_received {:telemetry, [:drove, :supervisor, :handoff], _, _}
  end

  @tag :capture_log
  test "state handoff: begin_handoff on the node a child leaves, end_handoff where it arrives" do
    [a, b] = nodes = C.start_nodes(2)
    members = for n <- nodes, do: {@sup, n}
    opts = [members: members, handoff_max_bytes: 10_000]
    for n <- nodes, do: C.rpc(n, SupPeer, :start, [@sup, opts])
    C.wait_until(fn -> Enum.all?(nodes, &C.rpc(&1, SupPeer, :all_alive?, [@sup, 2])) end)

    # two children of each kind on each node
    tags =
      for kind <- [:resume, :restart, :big],
          node <- nodes,
          tag <-
            Drove.Test.HandoffPeer.placed(@sup, nodes, node, "tel_#{kind}", 2, fn t ->
              Drove.Test.Keeper.spec(t, kind)
            end) do
        :ok = C.rpc(a, Drove.Test.HandoffPeer, :start_keepers, [@sup, [tag], kind])
        {tag, kind}
      end

    on_b = for {t, kind} <- tags, t in C.rpc(b, SupPeer, :running, [[t]]), do: {t, kind}
    assert Enum.sort(Enum.uniq(for {_, k} <- on_b, do: k)) == [:big, :restart, :resume]

    forward([b], [[:drove, :supervisor, :begin_handoff]])
    forward([a], [[:drove, :supervisor, :end_handoff]])
    :ok = C.rpc(b, SupPeer, :stop, [@sup])

    begins = receive_events([:drove, :supervisor, :begin_handoff], length(on_b))
    count = fn kind -> Enum.count(on_b, &match?({_, ^kind}, &1)) end

    kinds =
      Enum.map(begins, fn {m, meta} ->
        assert meta.supervisor == @sup and is_integer(m.duration)

        case meta.result do
          :resume -> assert(m.bytes > 0) && :resume
          :restart -> assert(m.bytes == 0) && :restart
          {:too_big, size, 10_000} -> assert(m.bytes == size and size > 100_000) && :big
        end
      end)

    assert Enum.frequencies(kinds) == %{
             resume: count.(:resume),
             restart: count.(:restart),
             big: count.(:big)
           }

    ends = receive_events([:drove, :supervisor, :end_handoff], count.(:resume))
    assert Enum.all?(ends, &match?({%{count: 1}, %{supervisor: @sup}}, &1))

    C.wait_until(fn -> C.rpc(a, SupPeer, :running, [Keyword.keys(tags)]) == Keyword.keys(tags) end)

    # a's instance emits end_handoff: its answer to a call comes after any event it sent before
    _ = :sys.get_state({@sup, a})
    refute_received {:telemetry, [:drove, :supervisor, :end_handoff], _, _}
  end

  test "Drove.Membership reports each new node set" do
    [a, b] = nodes = C.start_nodes(2)
    opts = [name: :telemetry_membership, instances: [:telemetry_instance], mode: :participation]

    for n <- nodes, do: {:ok, _} = C.rpc(n, F, :start, [:telemetry_instance])
    forward([a], [[:drove, :membership, :change]])
    {:ok, _} = C.rpc(a, F, :start_membership, [opts])
    {:ok, _} = C.rpc(b, F, :start_membership, [opts])

    # a's Membership started alone; b's joining is its first change
    assert [{%{nodes: 2, added: 1, removed: 0}, meta}] =
             receive_events([:drove, :membership, :change], 1)

    assert %{instances: [:telemetry_instance], mode: :participation, added: [^b]} = meta
    assert meta.nodes == Enum.sort(nodes)

    :ok = C.rpc(b, F, :stop_membership, [:telemetry_membership])

    assert [{%{nodes: 1, removed: 1}, %{nodes: [^a], removed: [^b], added: []}}] =
             receive_events([:drove, :membership, :change], 1)
  end
end
