defmodule Drove.StartDurabilityTest do
  # start_child answers {:ok, pid} only once another member than the child's node holds the
  # child's entry (so it survives the loss of that node right after), whether the child is
  # placed on the caller's node or on another; the node's DynamicSupervisor is not held
  # while it waits.
  use ExUnit.Case, async: false

  alias Drove.Test.{DurablePeer, SupPeer}
  alias Drove.TestCluster, as: C

  @moduletag :capture_log

  test "the entry is on another member when start_child answers, placed here or there" do
    [n1, n2] = C.start_nodes(2, apps: [:drove])
    sup = :durable_sup
    members = for n <- [n1, n2], do: {sup, n}

    for n <- [n1, n2] do
      C.rpc(n, SupPeer, :start, [
        sup,
        [members: members, distribution_strategy: Drove.Test.PinStrategy]
      ])
    end

    C.wait_until(fn -> Enum.all?([n1, n2], &C.rpc(&1, SupPeer, :all_alive?, [sup, 2])) end)

    # a start's own answer comes back as it is, wherever the child runs: {:ok, pid, info}
    # (durable as {:ok, pid} is), :ignore, {:error, reason}
    for {target, witness} <- [{n2, n2}, {n1, n2}], how <- [:info, :ignore, :error] do
      tag = :"answer_#{how}_#{target == n1}"

      {result, here, there} =
        C.rpc(n1, DurablePeer, :start_answering, [sup, target, witness, how, tag])

      case how do
        :info ->
          assert {{:ok, pid, {:info, ^tag}}, true, true} = {result, here, there}
          assert node(pid) == target

        :ignore ->
          assert result == :ignore

        :error ->
          assert result == {:error, tag}
      end
    end

    for i <- 1..20 do
      # placed on n2, called from n1: n1's replica has it when the answer comes
      assert {{:ok, pid}, true, _} =
               C.rpc(n1, DurablePeer, :start_and_look, [sup, n2, n2, :"dur_there_#{i}"])

      assert node(pid) == n2

      # placed on n1 itself: n2 has it when the answer comes
      assert {{:ok, pid}, true, true} =
               C.rpc(n1, DurablePeer, :start_and_look, [sup, n1, n2, :"dur_here_#{i}"])

      assert node(pid) == n1
    end

    # A child placed on n2 comes with its entry in the answer, which goes to n1's instance
    # as n2's push would: start_child does not wait for that instance (suspended here), and
    # the child outlives n2 all the same, as the entry is in the instance's queue. n2's
    # instance is suspended too: its push never leaves, only the answer carries the entry.
    :ok = :sys.suspend({sup, n2})
    :ok = :sys.suspend({sup, n1})
    :ok = C.rpc(n1, DurablePeer, :start_async, [sup, {:pin_or_any, n2}, :dur_held, self()])
    assert_receive {:returned, {:ok, pid}}
    assert node(pid) == n2
    instance = C.rpc(n1, Process, :whereis, [sup])
    {:messages, msgs} = C.rpc(n1, Process, :info, [instance, :messages])
    assert Enum.any?(msgs, &match?({:drove_delta, _, _}, &1))

    # n2 goes before n1's instance has seen the entry
    C.kill(n2)
    :ok = :sys.resume({sup, n1})

    # n1, the only member left, runs the child again (its id lets it go anywhere then)
    C.wait_until(fn -> C.rpc(n1, Process, :whereis, [:dur_held]) != nil end)
    assert_receive {:started, {:ok, _}, true}
  end
end
