defmodule Drove.TelemetryTest do
  # The events, on one node, through the test-only :telemetry stand-in (test/support). Other
  # tests run meanwhile and send events too: each assertion matches this test's own
  # replica, registry or supervisor in the metadata.
  use ExUnit.Case, async: true

  alias Drove.CRDT
  alias Drove.DynamicSupervisor, as: DS
  alias Drove.Test.Telemetry, as: T

  @moduletag :capture_log

  defp unique(prefix), do: :"#{prefix}_#{System.unique_integer([:positive])}"

  defp forward(events) do
    id = T.forward(events)
    on_exit(fn -> :telemetry.detach(id) end)
  end

  defp start_crdt(name, neighbours) do
    start_supervised!({CRDT, name: name, neighbours: neighbours}, id: name)
  end

  test "Drove finds :telemetry (here the stand-in) and remembers it" do
    assert Drove.Telemetry.handler() == :telemetry
    assert Drove.Telemetry.detect() == :telemetry
    assert :persistent_term.get({Drove.Telemetry, :module}) == :telemetry
  end

  test "a push from one replica and its join by the other, with sizes and durations" do
    forward([[:drove, :replication, :push], [:drove, :replication, :join]])
    [a, b] = [unique(:crdt_a), unique(:crdt_b)]
    start_crdt(b, [])
    start_crdt(a, [b])
    CRDT.set_neighbours(b, [a])
    CRDT.put(a, :k, String.duplicate("v", 1000))
    assert_receive {:telemetry, [:drove, :replication, :push], push, %{replica: ^a}}, 5_000
    assert push.chunks >= 1 and push.targets == 1 and push.bytes > 1000
    assert is_integer(push.duration) and push.duration >= 0

    assert_receive {:telemetry, [:drove, :replication, :join], join, %{replica: ^b} = meta},
                   5_000

    assert join.elements >= 1 and join.bytes > 1000 and join.duration >= 0
    assert meta.from == Process.whereis(a)
  end

  test "an anti-entropy round: started, answered by the peer, finished" do
    [a, b] = [unique(:crdt_a), unique(:crdt_b)]
    start_crdt(b, [])
    CRDT.put(b, :only_on_b, 1)
    forward([[:drove, :anti_entropy, :start], [:drove, :anti_entropy, :reply]])
    forward([[:drove, :anti_entropy, :finish]])
    start_crdt(a, [b])
    CRDT.sync(a)

    assert_receive {:telemetry, [:drove, :anti_entropy, :start], %{rounds: n}, %{replica: ^a}},
                   5_000

    assert n >= 1
    pid_a = Process.whereis(a)

    assert_receive {:telemetry, [:drove, :anti_entropy, :reply], reply,
                    %{replica: ^b, peer: ^pid_a}},
                   5_000

    # b's entry went to a in the reply's chunks
    assert reply.chunks >= 1 and reply.bytes > 0 and reply.duration >= 0

    assert_receive {:telemetry, [:drove, :anti_entropy, :finish], finish, %{replica: ^a}},
                   5_000

    assert Map.keys(finish) |> Enum.sort() == [:bytes, :chunks, :diffs, :duration, :removed]
  end

  test "a bad peer message" do
    forward([[:drove, :replication, :bad_message]])
    a = unique(:crdt_a)
    start_crdt(a, [])
    send(a, {:drove_delta, self(), "not a delta"})

    assert_receive {:telemetry, [:drove, :replication, :bad_message], %{count: 1},
                    %{replica: ^a, reason: {:delta, _}}},
                   5_000
  end

  test "an instance's member list changes" do
    forward([[:drove, :cluster, :members]])
    reg = unique(:reg)
    start_supervised!({Drove.Registry, name: reg, keys: :unique})
    me = {reg, node()}
    other = {reg, :"nowhere@127.0.0.1"}

    # at start the registry is its only member
    assert_receive {:telemetry, [:drove, :cluster, :members], %{members: 1, added: 1},
                    %{instance: ^reg, added: [^me], removed: []}}

    :ok = Drove.Cluster.set_members(reg, [reg, other])

    assert_receive {:telemetry, [:drove, :cluster, :members], %{members: 2, added: 1, removed: 0},
                    %{instance: ^reg, added: [^other], removed: []}}

    # the same list again changes nothing: no event
    :ok = Drove.Cluster.set_members(reg, [reg, other])
    :ok = Drove.Cluster.set_members(reg, [reg])

    assert_receive {:telemetry, [:drove, :cluster, :members], %{members: 1, removed: 1},
                    %{instance: ^reg, removed: [^other]}}

    refute_received {:telemetry, [:drove, :cluster, :members], _, %{instance: ^reg}}
    assert Drove.Cluster.members(reg) == [me]
  end

  test "start_child: duration and result; the supervisor's poller sends its counts" do
    forward([[:drove, :supervisor, :start_child], [:drove, :supervisor, :children]])
    forward([[:horde, :supervisor, :supervised_process_count]])
    sup = unique(:sup)
    start_supervised!({DS, name: sup, strategy: :one_for_one})
    {:ok, pid} = DS.start_child(sup, {Agent, fn -> 1 end})

    assert_receive {:telemetry, [:drove, :supervisor, :start_child], %{duration: d},
                    %{supervisor: ^sup, result: {:ok, ^pid}}}

    assert d >= 0

    # the poller runs in the instance's tree (its first tick is 5 s away: this one is now)
    poller = poller(sup)
    assert :sys.get_state(poller) == {sup, false}
    send(poller, :poll)

    assert_receive {:telemetry, [:drove, :supervisor, :children],
                    %{children: 1, local_children: 1}, %{supervisor: ^sup}},
                   5_000

    # without the compat flag, no Horde event
    :sys.get_state(poller)
    refute_received {:telemetry, [:horde | _], _, %{name: ^sup}}
  end

  defp poller(sup) do
    [pid] =
      for {Drove.DynamicSupervisor.Poller, pid, _, _} <-
            Supervisor.which_children(Drove.DynamicSupervisor.Tree.name(sup)),
          do: pid

    pid
  end

  test "without :telemetry nothing is sent and nothing fails" do
    # what Drove sees on a node without the package: a module that is not loaded
    forward([[:drove, :replication, :bad_message]])
    a = unique(:crdt_a)
    start_crdt(a, [])

    try do
      :persistent_term.put({Drove.Telemetry, :module}, nil)
      assert Drove.Telemetry.handler() == nil
      assert Drove.Telemetry.timed([:x], %{}, fn -> :result end) == :result
      assert Drove.Telemetry.execute([:x], %{}, %{}) == :ok
      send(a, {:drove_delta, self(), "not a delta"})
      assert CRDT.info(a).bad_messages == 1
    after
      Drove.Telemetry.detect()
    end

    refute_received {:telemetry, _, _, %{replica: ^a}}
  end
end
