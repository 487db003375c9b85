defmodule Drove.AddressingTest do
  # Every function that takes a supervisor or a cluster instance accepts what OTP's do: a pid
  # (of the instance or of its top supervisor), a local name, {name, node}, {:global, term}
  # and {:via, module, term}; an instance on another node is called there.
  use ExUnit.Case, async: false

  alias Drove.DynamicSupervisor, as: DS
  alias Drove.Test.{CountingWorker, SupPeer}
  alias Drove.TestCluster, as: C

  @moduletag :capture_log

  setup_all do
    [peer] = C.start_nodes(1, apps: [:drove])
    on_exit(fn -> C.stop_all() end)
    {:ok, peer: peer}
  end

  test "a supervisor on another node, addressed every way", ctx do
    name = :"addr_sup_#{ctx.line}"
    top = C.rpc(ctx.peer, SupPeer, :start, [name, [members: [{name, ctx.peer}]]])
    instance = C.rpc(ctx.peer, Process, :whereis, [name])
    :yes = :global.register_name({:drove_addr, ctx.line}, instance)
    collector = self()

    forms = [
      {name, ctx.peer},
      instance,
      top,
      {:global, {:drove_addr, ctx.line}},
      {:via, :global, {:drove_addr, ctx.line}}
    ]

    pids =
      for {form, i} <- Enum.with_index(forms) do
        spec = {CountingWorker, {:"addr_#{i}", collector, :permanent}}
        assert {:ok, pid} = DS.start_child(form, spec)
        assert node(pid) == ctx.peer
        pid
      end

    for form <- forms do
      assert Enum.sort(for {_, p, _, _} <- DS.which_children(form), do: p) == Enum.sort(pids)
      assert DS.count_children(form).active == length(pids)
    end

    for {form, pid} <- Enum.zip(forms, pids) do
      assert :ok = DS.terminate_child(form, pid)
      assert {:error, :not_found} = DS.terminate_child(form, pid)
    end

    assert DS.count_children({name, ctx.peer}).active == 0
    assert :ok = DS.stop(top)
    assert C.rpc(ctx.peer, Process, :whereis, [name]) == nil
  end

  test "a reference to nothing exits like a call; a name that is no supervisor raises", ctx do
    spec = {CountingWorker, {:x, self(), :temporary}}
    assert {:noproc, _} = catch_exit(DS.start_child({:global, :nobody_here}, spec))
    assert {:noconnection, _} = catch_exit(DS.start_child({:sup, :"nowhere@127.0.0.1"}, spec))

    # the same, on this node or on another
    for node <- [node(), ctx.peer] do
      assert_raise ArgumentError, ~r/not a running Drove.DynamicSupervisor/, fn ->
        DS.which_children({:"no_sup_#{ctx.line}", node})
      end
    end

    assert_raise ArgumentError, fn -> DS.count_children("not a reference") end
  end

  test "set_members on a remote instance: a bare name is that node's member", ctx do
    name = :"addr_reg_#{ctx.line}"

    C.rpc(ctx.peer, Drove.Test.RegistryPeer, :start, [name, [members: [name]]])
    assert :ok = Drove.Cluster.set_members({name, ctx.peer}, [name, {:other, node()}])

    assert Drove.Cluster.members({name, ctx.peer}) ==
             Enum.sort([{name, ctx.peer}, {:other, node()}])
  end

  test "a registry is stopped through its name, its top supervisor or its pid", ctx do
    for form <- [:name, :top_name, :pid] do
      name = :"addr_stop_#{ctx.line}_#{form}"
      {:ok, top} = Drove.Registry.start_link(name: name, keys: :unique)
      Process.unlink(top)

      target =
        case form do
          :name -> name
          :top_name -> :"#{name}.Supervisor"
          :pid -> top
        end

      assert :ok = Drove.Registry.stop(target)
      refute Process.alive?(top)
    end
  end
end
