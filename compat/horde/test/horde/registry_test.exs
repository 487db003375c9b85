defmodule Horde.RegistryTest do
  # Horde.Registry's documented behaviour on one node (horde-semantics.md section 2).
  use ExUnit.Case, async: false

  alias Horde.Test.Worker

  defmodule ModuleRegistry do
    use Horde.Registry

    def start_link(init_arg),
      do: Horde.Registry.start_link(__MODULE__, init_arg, name: __MODULE__)

    @impl true
    def init(init_arg) do
      [keys: :unique, members: [__MODULE__]]
      |> Keyword.merge(init_arg)
      |> Horde.Registry.init()
    end
  end

  defmodule WithOptions do
    use Horde.Registry, restart: :transient, shutdown: 15_000

    def start_link(_), do: :ignore

    @impl true
    def init(_), do: :ignore
  end

  setup context do
    name = :"reg_#{context.line}"
    start_supervised!({Horde.Registry, name: name, keys: :unique, listeners: []})
    %{reg: name}
  end

  defp via(reg, key), do: {:via, Horde.Registry, {reg, key}}

  test "child specs and init/1 have Horde's shapes" do
    assert Horde.Registry.child_spec(name: :r, keys: :unique) == %{
             id: :r,
             start: {Horde.Registry, :start_link, [[name: :r, keys: :unique]]},
             type: :supervisor
           }

    assert Horde.Registry.child_spec(keys: :unique).id == Horde.Registry

    assert ModuleRegistry.child_spec([]) == %{
             id: ModuleRegistry,
             start: {ModuleRegistry, :start_link, [[]]},
             type: :supervisor
           }

    assert %{restart: :transient, shutdown: 15_000, type: :supervisor} = WithOptions.child_spec(1)

    assert {:ok, %{keys: :unique, members: [], listeners: [], meta: nil}} =
             Horde.Registry.init(keys: :unique)

    assert_raise ArgumentError, fn -> Horde.Registry.init([]) end
    assert_raise ArgumentError, fn -> Horde.Registry.init(keys: :duplicate) end
    assert WithOptions.start_link([]) == :ignore
  end

  test "a module-based registry is registered under its name and owns the tables" do
    pid = start_supervised!(ModuleRegistry)
    assert Process.whereis(:"Elixir.Horde.RegistryTest.ModuleRegistry.Supervisor") == pid
    owner = Process.whereis(ModuleRegistry)
    assert is_pid(owner)

    for table <- [
          ModuleRegistry,
          :"keys_Elixir.Horde.RegistryTest.ModuleRegistry",
          :"members_Elixir.Horde.RegistryTest.ModuleRegistry"
        ] do
      assert :ets.info(table, :owner) == owner, inspect(table)
    end

    assert Horde.Cluster.members(ModuleRegistry) == [{ModuleRegistry, node()}]
  end

  test "via tuples: start, call, whereis, send; a taken name gives :already_started", %{reg: reg} do
    {:ok, pid} = Worker.start_link(name: via(reg, :a))
    assert GenServer.call(via(reg, :a), :ping) == {:pong, node()}
    assert GenServer.whereis(via(reg, :a)) == pid
    assert Horde.Registry.whereis_name({reg, :a}) == pid
    assert Horde.Registry.whereis_name({reg, :missing}) == :undefined
    assert Horde.Registry.lookup(via(reg, :a)) == [{pid, nil}]
    assert Horde.Registry.send({reg, :a}, :hello) == :hello
    assert_raise ArgumentError, fn -> Horde.Registry.send({reg, :missing}, :hello) end
    assert GenServer.cast(via(reg, :missing), :hello) == :ok
    assert {:error, {:already_started, ^pid}} = Worker.start_link(name: via(reg, :a))

    # a value in the via tuple
    {:ok, pid2} = Worker.start_link(name: {:via, Horde.Registry, {reg, :b, :my_value}})
    assert Horde.Registry.lookup(reg, :b) == [{pid2, :my_value}]
  end

  test "register, lookup, keys, count, unregister", %{reg: reg} do
    assert {:ok, registry_pid} = Horde.Registry.register(reg, "k1", :v1)
    assert registry_pid == Process.whereis(reg)
    # read-your-writes
    assert Horde.Registry.lookup(reg, "k1") == [{self(), :v1}]
    assert {:error, {:already_registered, self()}} == Horde.Registry.register(reg, "k1", :other)
    {:ok, _} = Horde.Registry.register(reg, "k2", :v2)
    assert Enum.sort(Horde.Registry.keys(reg, self())) == ["k1", "k2"]
    assert Horde.Registry.count(reg) == 2

    task = Task.async(fn -> Horde.Registry.register(reg, "k1", :x) end)
    assert Task.await(task) == {:error, {:already_registered, self()}}

    assert Horde.Registry.unregister(reg, "k1") == :ok
    assert Horde.Registry.lookup(reg, "k1") == []
    assert Horde.Registry.keys(reg, self()) == ["k2"]
    assert Horde.Registry.keys(reg, :not_a_pid) == []
    assert Horde.Registry.count(reg) == 1
    assert Horde.Registry.unregister(reg, "never") == :ok
  end

  test "a process' exit removes its names", %{reg: reg} do
    {:ok, pid} = Worker.start(name: via(reg, :short_lived))
    assert Horde.Registry.count(reg) == 1
    ref = Process.monitor(pid)
    GenServer.call(pid, {:stop, :normal})
    assert_receive {:DOWN, ^ref, _, _, _}
    assert Horde.Registry.lookup(reg, :short_lived) == []
    Drove.TestCluster.wait_until(fn -> Horde.Registry.count(reg) == 0 end)
    assert {:ok, _} = Worker.start(name: via(reg, :short_lived))
  end

  test "select with Registry-style specs; match, count_match, dispatch", %{reg: reg} do
    {:ok, a} = Worker.start_link(name: via(reg, {:agent_server, 1}))
    {:ok, b} = Worker.start_link(name: via(reg, {:agent_server, 2}))
    {:ok, fs} = Worker.start_link(name: via(reg, {:filesystem_server, "s"}))

    assert Enum.sort(
             Horde.Registry.select(reg, [{{{:agent_server, :"$1"}, :_, :_}, [], [:"$1"]}])
           ) == [1, 2]

    assert Horde.Registry.select(reg, [
             {{{:filesystem_server, :"$1"}, :"$2", :_}, [], [{{:"$1", :"$2"}}]}
           ]) == [{"s", fs}]

    assert Enum.sort(Horde.Registry.select(reg, [{{:"$1", :"$2", :_}, [], [:"$2"]}])) ==
             Enum.sort([a, b, fs])

    assert_raise ArgumentError, fn -> Horde.Registry.select(reg, [{:bad, [], []}]) end

    {:ok, _} = Horde.Registry.register(reg, :counted, 10)
    assert Horde.Registry.match(reg, :counted, 10) == [{self(), 10}]
    assert Horde.Registry.match(reg, :counted, :"$1", [{:>, :"$1", 20}]) == []
    assert Horde.Registry.count_match(reg, :counted, :_) == 1
    assert Horde.Registry.count_match(reg, :counted, :"$1", [{:<, :"$1", 5}]) == 0

    me = self()

    assert Horde.Registry.dispatch(reg, :counted, fn entries -> send(me, {:got, entries}) end) ==
             :ok

    assert_receive {:got, [{^me, 10}]}
    assert Horde.Registry.dispatch(reg, :nobody, fn _ -> send(me, :wrong) end) == :ok
    refute_received :wrong
  end

  test "update_value, unregister_match", %{reg: reg} do
    {:ok, _} = Horde.Registry.register(reg, :val, 1)
    assert Horde.Registry.update_value(reg, :val, &(&1 + 1)) == {2, 1}
    assert Horde.Registry.lookup(reg, :val) == [{self(), 2}]
    assert Horde.Registry.update_value(reg, :absent, & &1) == :error

    task = Task.async(fn -> Horde.Registry.update_value(reg, :val, &(&1 * 10)) end)
    assert Task.await(task) == :error

    assert Horde.Registry.unregister_match(reg, :val, 99) == :ok
    assert Horde.Registry.lookup(reg, :val) == [{self(), 2}]
    assert Horde.Registry.unregister_match(reg, :val, 2) == :ok
    assert Horde.Registry.lookup(reg, :val) == []
  end

  test "meta" do
    start_supervised!(
      {Horde.Registry, name: :reg_meta, keys: :unique, meta: [custom: :value]},
      id: :meta
    )

    assert Horde.Registry.meta(:reg_meta, :custom) == {:ok, :value}
    assert Horde.Registry.meta(:reg_meta, :missing) == :error
    assert Horde.Registry.put_meta(:reg_meta, :other, 42) == :ok
    assert Horde.Registry.meta(:reg_meta, :other) == {:ok, 42}
    assert :ets.lookup(:reg_meta, :other) == [{:other, 42}]
    assert Horde.Registry.delete_meta(:reg_meta, :other) == :ok
    assert Horde.Registry.meta(:reg_meta, :other) == :error
  end

  test "listeners are told of registrations and unregistrations" do
    Process.register(self(), :horde_listener)

    start_supervised!(
      {Horde.Registry, name: :reg_listen, keys: :unique, listeners: [:horde_listener]},
      id: :listen
    )

    {:ok, _} = Horde.Registry.register(:reg_listen, :x, :val)
    me = self()
    assert_receive {:register, :reg_listen, :x, ^me, :val}
    :ok = Horde.Registry.unregister(:reg_listen, :x)
    assert_receive {:unregister, :reg_listen, :x, ^me}
  end

  test "the ETS tables have Horde's rows, and exist exactly while the registry runs" do
    name = Sagents.Registry
    keys = :"keys_Elixir.Sagents.Registry"
    {:ok, sup} = Horde.Registry.start_link(name: name, keys: :unique)
    {:ok, pid} = Worker.start(name: via(name, {:agent_server, "a"}))

    assert :ets.lookup(keys, {:agent_server, "a"}) ==
             [{{:agent_server, "a"}, {name, node()}, {pid, nil}}]

    assert :ets.tab2list(:"members_Elixir.Sagents.Registry") == [{{name, node()}, 1}]
    assert :ets.info(keys, :owner) == Process.whereis(name)

    Process.unlink(sup)
    :ok = Horde.Registry.stop(name)
    assert :ets.whereis(keys) == :undefined
    assert Process.whereis(name) == nil

    assert_raise ArgumentError, fn -> Horde.Registry.lookup(name, {:agent_server, "a"}) end

    assert_raise ArgumentError, fn ->
      Horde.Registry.select(name, [{{:_, :_, :_}, [], [true]}])
    end

    # as Horde's: count/1 answers :undefined, keys/2 raises
    assert Horde.Registry.count(name) == :undefined
    assert_raise ArgumentError, fn -> Horde.Registry.keys(name, pid) end

    # the stack Sagents' rolling-deploy test pins (sagents-contract.md section 7)
    {e, stack} =
      try do
        GenServer.whereis(via(name, {:agent_server, "a"}))
      rescue
        e -> {e, __STACKTRACE__}
      end

    assert %ArgumentError{} = e
    assert Exception.message(e) =~ "the table identifier does not refer to an existing ETS table"
    assert {:ets, :lookup, [^keys, {:agent_server, "a"}], _} = hd(stack)
    mfas = for {m, f, a, _} <- stack, do: {m, f, if(is_list(a), do: length(a), else: a)}
    assert {Horde.Registry, :lookup, 2} in mfas
    assert {Horde.Registry, :whereis_name, 2} in mfas
    assert {GenServer, :whereis, 1} in mfas
  end
end
