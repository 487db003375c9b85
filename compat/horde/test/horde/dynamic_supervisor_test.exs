defmodule Horde.DynamicSupervisorTest do
  # Horde.DynamicSupervisor's documented behaviour on one node (horde-semantics.md 3.1-3.4).
  use ExUnit.Case, async: false

  alias Horde.Test.Worker
  alias Horde.DynamicSupervisor, as: HDS

  defmodule ModuleSup do
    use Horde.DynamicSupervisor

    def start_link(init_arg, opts \\ [name: __MODULE__]),
      do: Horde.DynamicSupervisor.start_link(__MODULE__, init_arg, opts)

    @impl true
    def init(init_arg) do
      [strategy: :one_for_one, members: [__MODULE__]]
      |> Keyword.merge(init_arg)
      |> Horde.DynamicSupervisor.init()
    end
  end

  test "child specs and init/1 have Horde's shapes (no Drove needed)" do
    assert HDS.child_spec(name: :s, strategy: :one_for_one) == %{
             id: :s,
             start: {HDS, :start_link, [[name: :s, strategy: :one_for_one]]},
             type: :supervisor
           }

    assert HDS.child_spec(strategy: :one_for_one).id == HDS

    assert ModuleSup.child_spec(:arg) == %{
             id: ModuleSup,
             start: {ModuleSup, :start_link, [:arg]},
             type: :supervisor
           }

    assert_raise ArgumentError, "expected :strategy option to be given", fn -> HDS.init([]) end
  end

  describe "with Drove.DynamicSupervisor" do
    setup context do
      name = :"sup_#{context.line}"
      start_supervised!({HDS, name: name, strategy: :one_for_one}, shutdown: :infinity)
      %{sup: name}
    end

    test "init/1 defaults, the local name, members_info with Horde's Member struct", %{sup: sup} do
      assert {:ok, flags} = HDS.init(strategy: :one_for_one)
      assert flags.distribution_strategy == Horde.UniformDistribution
      assert is_pid(Process.whereis(sup))
      assert is_pid(Process.whereis(:"#{sup}.Supervisor"))
      assert :ok == HDS.wait_for_quorum(sup, 1000)

      state = :sys.get_state(sup)
      me = node()

      assert %{{^sup, ^me} => %Horde.DynamicSupervisor.Member{name: {^sup, ^me}, status: :alive}} =
               state.members_info

      assert Horde.Cluster.members(sup) == [{sup, node()}]
    end

    test "start_child, which_children, count_children, terminate_child", %{sup: sup} do
      {:ok, w} = HDS.start_child(sup, Worker.spec(tag: 1))

      {:ok, s} =
        HDS.start_child(sup, %{
          id: :task_sup,
          start: {Task.Supervisor, :start_link, [[]]},
          type: :supervisor
        })

      {:ok, _} = HDS.start_child(sup, {Worker, [tag: 2]})

      children = HDS.which_children(sup)
      assert length(children) == 3
      assert {:undefined, w, :worker, [Worker]} in children
      assert {:undefined, s, :supervisor, [Task.Supervisor]} in children
      assert HDS.count_children(sup) == %{specs: 3, active: 3, supervisors: 1, workers: 2}

      assert HDS.terminate_child(sup, w) == :ok
      refute Process.alive?(w)
      assert HDS.terminate_child(sup, w) == {:error, :not_found}
      assert HDS.terminate_child(sup, spawn(fn -> :ok end)) == {:error, :not_found}
      assert %{specs: 2, active: 2} = HDS.count_children(sup)
    end

    test "the child's start result is passed through", %{sup: sup} do
      ignore = %{id: :ignore, start: {Function, :identity, [:ignore]}}
      assert HDS.start_child(sup, ignore) == :ignore
      fail = %{id: :fail, start: {Function, :identity, [{:error, :boom}]}}
      assert HDS.start_child(sup, fail) == {:error, :boom}
      assert HDS.count_children(sup).specs == 0
    end

    test "restarts: abnormal exits restart locally; :transient normal and :temporary are not",
         %{sup: sup} do
      {:ok, perm} = HDS.start_child(sup, Worker.spec([tag: :perm], :permanent))
      {:ok, trans} = HDS.start_child(sup, Worker.spec([tag: :trans], :transient))
      {:ok, temp} = HDS.start_child(sup, Worker.spec([tag: :temp], :temporary))
      {:ok, trans2} = HDS.start_child(sup, Worker.spec([tag: :trans2], :transient))

      Process.exit(perm, :kill)
      Process.exit(trans, :kill)

      Drove.TestCluster.wait_until(fn ->
        pids = for {_, pid, _, _} <- HDS.which_children(sup), is_pid(pid), do: pid
        length(pids) == 4 and perm not in pids and trans not in pids
      end)

      GenServer.call(trans2, {:stop, :normal})
      Process.exit(temp, :kill)

      Drove.TestCluster.wait_until(fn -> HDS.count_children(sup).specs == 2 end)
      # at rest (nothing starting, restarting or stopping): nothing is restarted later
      Drove.TestCluster.wait_until(fn -> Drove.Test.SupPeer.at_rest?(sup, [node()]) end)
      assert %{specs: 2, active: 2} = HDS.count_children(sup)
      assert Enum.all?(HDS.which_children(sup), fn {_, pid, _, _} -> node(pid) == node() end)
    end

    test "a module-based supervisor; stop/1 stops the local tree" do
      {:ok, pid} = ModuleSup.start_link(max_children: 1)
      Process.unlink(pid)
      {:ok, _} = HDS.start_child(ModuleSup, Worker.spec(tag: 1))
      assert {:error, :max_children} = HDS.start_child(ModuleSup, Worker.spec(tag: 2))
      assert HDS.stop(ModuleSup) == :ok
      refute Process.alive?(pid)
      assert Process.whereis(ModuleSup) == nil
    end
  end
end
