defmodule Drove.Test.SagentsPeer do
  @moduledoc false
  # Runs ON peer nodes (test modules are not loaded there): a stand-in for
  # `Sagents.Supervisor` under `config :sagents, :horde, members: :participation`
  # (sagents-contract.md sections 8.1 and 10.2), built from real Drove instances.
  #
  # The tree is `:rest_for_one`, in Sagents' order: the three distributed instances, the
  # `:pg` scope, then the membership process. Each instance is seeded self-only
  # (`members: [{name, node()}]`), as `Sagents.Horde.ClusterConfig.resolve_members/1` does
  # under :participation; `Drove.Membership` then sets the participants on all three.
  #
  # The registry is a `Drove.Registry`, the two supervisors `Drove.DynamicSupervisor`s, as
  # in Sagents (agents shut down within 30 s, file systems within 15 s).
  #
  # The tree runs under the :drove application's supervisor rather than under the RPC's
  # process (which exits when the call returns and would take a linked tree with it). It is
  # long-lived, and `:init.stop/0` stops it gracefully, as a host application's tree is:
  # the membership leaves its `:pg` group first, the registries stop last.

  @registry Sagents.Registry
  @instances [
    Sagents.Registry,
    Sagents.AgentsDynamicSupervisor,
    Sagents.FileSystem.FileSystemSupervisor
  ]
  @membership Sagents.Horde.MembershipManager
  @tree Drove.Test.SagentsPeer.Supervisor
  @keys_table :"keys_Elixir.Sagents.Registry"

  @doc "The names of the three instances, in start order."
  @spec instances() :: [atom()]
  def instances, do: @instances

  @doc "The registry's keys table, whose existence is Sagents' availability sentinel."
  @spec keys_table() :: atom()
  def keys_table, do: @keys_table

  @doc """
  Starts the tree on this node with `mode: :participation` and `opts[:partition]` (nil:
  no partition). Returns the tree's pid.
  """
  @spec start(keyword()) :: pid()
  def start(opts \\ []) do
    [registry | supervisors] = @instances

    registries = [
      Supervisor.child_spec(
        {Drove.Registry, name: registry, keys: :unique, members: [{registry, node()}]},
        id: registry
      )
      | for name <- supervisors do
          Supervisor.child_spec(
            {Drove.DynamicSupervisor,
             name: name, strategy: :one_for_one, members: [{name, node()}]},
            id: name
          )
        end
    ]

    membership =
      {Drove.Membership,
       name: @membership,
       instances: @instances,
       mode: :participation,
       partition: Keyword.get(opts, :partition)}

    children = registries ++ [Drove.Membership.scope_spec(), membership]

    spec = %{
      id: @tree,
      start: {Supervisor, :start_link, [children, [strategy: :rest_for_one, name: @tree]]},
      type: :supervisor,
      restart: :temporary,
      shutdown: :infinity
    }

    {:ok, pid} = Supervisor.start_child(Drove.Supervisor, spec)
    pid
  end

  @doc "Stops the tree gracefully (children in reverse order, as Sagents' does)."
  @spec stop() :: :ok
  def stop do
    :ok = Supervisor.terminate_child(Drove.Supervisor, @tree)
    # a :temporary child is deleted on termination already
    _ = Supervisor.delete_child(Drove.Supervisor, @tree)
    :ok
  end

  @doc "`%{instance => sorted member nodes}` of the three instances of this node."
  @spec member_nodes() :: %{atom() => [node()]}
  def member_nodes do
    Map.new(@instances, fn i ->
      {i, i |> Drove.Cluster.members() |> Enum.map(fn {^i, n} -> n end) |> Enum.sort()}
    end)
  end

  @doc "The nodes the membership process currently applies."
  @spec membership_nodes() :: [node()]
  def membership_nodes, do: Drove.Membership.members(@membership)

  @doc "Starts an unlinked \"agent\" registered by via tuple `{Sagents.Registry, key}`."
  @spec start_agent(term()) :: GenServer.on_start()
  def start_agent(key), do: Drove.Test.Named.start(@registry, key)

  @doc """
  `Drove.Registry.lookup/2` on this node: `{:ok, entries}`, or `{:raised, module, message}`
  when it raises (the registry does not run here).
  """
  @spec lookup(term()) :: {:ok, [{pid(), term()}]} | {:raised, module(), String.t()}
  def lookup(key), do: probe(fn -> Drove.Registry.lookup(@registry, key) end)

  @doc "`GenServer.whereis/1` of the agent's via tuple, like `lookup/1`."
  @spec whereis(term()) :: {:ok, pid() | nil} | {:raised, module(), String.t()}
  def whereis(key),
    do: probe(fn -> GenServer.whereis({:via, Drove.Registry, {@registry, key}}) end)

  defp probe(fun) do
    {:ok, fun.()}
  rescue
    e -> {:raised, e.__struct__, Exception.message(e)}
  end

  @doc "Whether the keys table exists here."
  @spec table?() :: boolean()
  def table?, do: :ets.whereis(@keys_table) != :undefined

  @doc "Whether the keys table exists and is owned by the process registered as the registry."
  @spec table_owned_by_registry?() :: boolean()
  def table_owned_by_registry? do
    owner = Process.whereis(@registry)
    is_pid(owner) and :ets.info(@keys_table, :owner) == owner
  end

  @doc "Kills the registry process (as a crash would); returns its pid once it is down."
  @spec kill_registry() :: pid()
  def kill_registry do
    pid = Process.whereis(@registry)
    ref = Process.monitor(pid)
    Process.exit(pid, :kill)

    receive do
      {:DOWN, ^ref, :process, ^pid, _} -> pid
    after
      5000 -> raise "#{inspect(@registry)} did not exit"
    end
  end
end
