defmodule Horde.Test.Sagents do
  @moduledoc false
  # Runs ON peers: a Sagents-shaped application written against Horde's API only, as Sagents
  # 0.13 is (sagents-contract.md sections 2-11): `use Horde.Registry` /
  # `use Horde.DynamicSupervisor` impl modules named Sagents.Registry,
  # Sagents.AgentsDynamicSupervisor and Sagents.FileSystem.FileSystemSupervisor, a
  # RegistryWatcher, a :pg MembershipManager in :participation mode (optional partition)
  # that calls Horde.Cluster.set_members/2, in a :rest_for_one tree in Sagents' order.
  #
  # When Drove.DynamicSupervisor does not exist yet, the two supervisors are left out of
  # the tree and agents are started unsupervised (the tests needing them are excluded).

  alias Horde.Test.Sagents.{AgentSupervisor, MembershipManager}

  @registry Sagents.Registry
  @agents Sagents.AgentsDynamicSupervisor
  @filesystems Sagents.FileSystem.FileSystemSupervisor
  @tree Horde.Test.Sagents.Supervisor
  @keys_table :"keys_Elixir.Sagents.Registry"

  @spec supervisors?() :: boolean()
  def supervisors?, do: Code.ensure_loaded?(Drove.DynamicSupervisor)

  @doc "The Horde instances of the tree (the membership manager's `hordes/0`)."
  @spec hordes() :: [atom()]
  def hordes, do: if(supervisors?(), do: [@registry, @agents, @filesystems], else: [@registry])

  @doc "Starts the tree on this node (`opts[:partition]`); returns its pid."
  @spec start(keyword()) :: pid()
  def start(opts \\ []) do
    Application.put_env(:sagents_shaped, :partition, Keyword.get(opts, :partition))

    supervisors =
      if supervisors?() do
        [
          Horde.Test.Sagents.AgentsSupervisorImpl.child_spec([]),
          Horde.Test.Sagents.FileSystemSupervisorImpl.child_spec([])
        ]
      else
        []
      end

    children =
      [
        Supervisor.child_spec(Horde.Test.Sagents.RegistryImpl, shutdown: 15_000),
        Horde.Test.Sagents.RegistryWatcher
      ] ++
        supervisors ++
        [
          %{
            id: Sagents.Horde.MembershipScope,
            start: {:pg, :start_link, [Sagents.Horde.MembershipScope]}
          },
          MembershipManager
        ]

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

  @doc "Stops the tree gracefully, children in reverse order (a rolling deploy's drain)."
  @spec stop() :: :ok
  def stop do
    :ok = Supervisor.terminate_child(Drove.Supervisor, @tree)
    _ = Supervisor.delete_child(Drove.Supervisor, @tree)
    :ok
  end

  @doc "`%{horde => sorted member nodes}` on this node."
  @spec member_nodes() :: %{atom() => [node()]}
  def member_nodes do
    Map.new(hordes(), fn h ->
      {h, h |> Horde.Cluster.members() |> Enum.map(fn {^h, n} -> n end) |> Enum.sort()}
    end)
  end

  @doc "Sagents' `available?/0`: the keys table is the sentinel."
  @spec available?() :: boolean()
  def available?, do: :ets.whereis(@keys_table) != :undefined

  @doc "Starts an agent (`AgentsDynamicSupervisor.start_agent`): `{:ok, pid}` of its supervisor."
  @spec start_agent(term(), keyword()) :: {:ok, pid()} | {:ok, pid(), :already_started} | term()
  def start_agent(id, opts \\ []) do
    spec = %{
      id: AgentSupervisor,
      start: {AgentSupervisor, :start_link, [[agent_id: id] ++ opts]},
      restart: :transient,
      type: :supervisor
    }

    if supervisors?() do
      case Horde.DynamicSupervisor.start_child(@agents, spec) do
        {:ok, pid} -> {:ok, pid}
        {:error, {:already_started, pid}} -> {:ok, pid, :already_started}
        other -> other
      end
    else
      AgentSupervisor.start_unlinked([agent_id: id] ++ opts)
    end
  end

  @doc "Starts a file system server under the file-system supervisor."
  @spec start_filesystem(term()) :: term()
  def start_filesystem(scope) do
    spec = %{
      id: Horde.Test.Worker,
      start:
        {Horde.Test.Worker, :start_link,
         [[name: {:via, Horde.Registry, {@registry, {:filesystem_server, scope}}}, trap: true]]},
      restart: :transient
    }

    Horde.DynamicSupervisor.start_child(@filesystems, spec)
  end

  @doc "`AgentSupervisor.get_pid/1`: `{:ok, pid}` or `{:error, :not_found}`; raises when unavailable."
  @spec get_pid(term()) :: {:ok, pid()} | {:error, :not_found}
  def get_pid(id) do
    case Horde.Registry.lookup(@registry, {:agent_supervisor, id}) do
      [{pid, _}] -> {:ok, pid}
      [] -> {:error, :not_found}
    end
  end

  @doc "`AgentServer.fetch_pid/1`: `:registry_unavailable` instead of raising on a drained node."
  @spec fetch(term()) :: {:ok, pid()} | {:error, :not_found | :registry_unavailable}
  def fetch(id) do
    if available?() do
      case Horde.Registry.lookup(@registry, {:agent_server, id}) do
        [{pid, _}] -> {:ok, pid}
        [] -> {:error, :not_found}
      end
    else
      {:error, :registry_unavailable}
    end
  rescue
    ArgumentError -> {:error, :registry_unavailable}
  end

  @doc "`GenServer.whereis/1` of the agent server's via tuple, or the exception it raised."
  @spec raw_whereis(term()) :: {:ok, pid() | nil} | {:raised, Exception.t(), list()}
  def raw_whereis(id) do
    {:ok, GenServer.whereis({:via, Horde.Registry, {@registry, {:agent_server, id}}})}
  rescue
    e -> {:raised, e, __STACKTRACE__}
  end

  @doc "Stops an agent normally, as Sagents' inactivity timeout does (`Supervisor.stop(pid, :normal)`)."
  @spec stop_agent_normally(term()) :: :ok
  def stop_agent_normally(id) do
    {:ok, pid} = get_pid(id)
    Supervisor.stop(pid, :normal)
  end

  @doc "`list_running_agents/0`: Sagents' select over `{:agent_server, id}` keys."
  @spec list_running_agents() :: [term()]
  def list_running_agents,
    do: Horde.Registry.select(@registry, [{{{:agent_server, :"$1"}, :_, :_}, [], [:"$1"]}])

  @doc "Whether `node`'s status in the agents supervisor's members_info is :alive."
  @spec member_alive?(node()) :: boolean()
  def member_alive?(node) do
    :sys.get_state(@agents).members_info
    |> Enum.any?(fn {{_, n}, %{status: status}} -> n == node and status == :alive end)
  end

  @doc "Kills the registry process, as Sagents' cluster helper does; returns the old pid."
  @spec kill_registry() :: pid()
  def kill_registry do
    pid = Process.whereis(@registry)
    ref = Process.monitor(pid)
    Process.exit(pid, :kill)

    receive do
      {:DOWN, ^ref, :process, ^pid, _} -> pid
    after
      5000 -> raise "registry did not die"
    end
  end
end

defmodule Horde.Test.Sagents.ClusterConfig do
  @moduledoc false
  # Sagents.Horde.ClusterConfig.resolve_members/1 under :participation: self only.
  @spec resolve_members(atom()) :: [{atom(), node()}]
  def resolve_members(name), do: [{name, Node.self()}]
end

defmodule Horde.Test.Sagents.RegistryImpl do
  @moduledoc false
  use Horde.Registry

  @spec start_link(keyword()) :: Supervisor.on_start()
  def start_link(init_arg),
    do: Horde.Registry.start_link(__MODULE__, init_arg, name: Sagents.Registry)

  @impl true
  def init(init_arg) do
    [keys: :unique, members: Horde.Test.Sagents.ClusterConfig.resolve_members(Sagents.Registry)]
    |> Keyword.merge(init_arg)
    |> Horde.Registry.init()
  end
end

defmodule Horde.Test.Sagents.AgentsSupervisorImpl do
  @moduledoc false
  use Horde.DynamicSupervisor

  @name Sagents.AgentsDynamicSupervisor

  @spec start_link(keyword()) :: Supervisor.on_start()
  def start_link(init_arg),
    do: Horde.DynamicSupervisor.start_link(__MODULE__, init_arg, name: @name)

  @impl true
  def init(init_arg) do
    [
      strategy: :one_for_one,
      members: Horde.Test.Sagents.ClusterConfig.resolve_members(@name),
      distribution_strategy: Horde.UniformDistribution
    ]
    |> Keyword.merge(init_arg)
    |> Horde.DynamicSupervisor.init()
  end

  @impl true
  def child_spec(arg) do
    %{
      id: __MODULE__,
      start: {__MODULE__, :start_link, [arg]},
      type: :supervisor,
      shutdown: 30_000
    }
  end
end

defmodule Horde.Test.Sagents.FileSystemSupervisorImpl do
  @moduledoc false
  use Horde.DynamicSupervisor

  @name Sagents.FileSystem.FileSystemSupervisor

  @spec start_link(keyword()) :: Supervisor.on_start()
  def start_link(init_arg),
    do: Horde.DynamicSupervisor.start_link(__MODULE__, init_arg, name: @name)

  @impl true
  def init(init_arg) do
    [
      strategy: :one_for_one,
      members: Horde.Test.Sagents.ClusterConfig.resolve_members(@name),
      distribution_strategy: Horde.UniformDistribution
    ]
    |> Keyword.merge(init_arg)
    |> Horde.DynamicSupervisor.init()
  end

  @impl true
  def child_spec(arg) do
    %{
      id: __MODULE__,
      start: {__MODULE__, :start_link, [arg]},
      type: :supervisor,
      shutdown: 15_000
    }
  end
end

defmodule Horde.Test.Sagents.RegistryWatcher do
  @moduledoc false
  # Sagents.RegistryWatcher: stops with {:shutdown, {:registry_down, reason}} when the
  # registry process dies, so that :rest_for_one restarts this node's agents.
  use GenServer

  @spec start_link(term()) :: GenServer.on_start()
  def start_link(_), do: GenServer.start_link(__MODULE__, nil)

  @impl true
  def init(nil), do: {:ok, watch(nil)}

  @impl true
  def handle_info(:poll, _), do: {:noreply, watch(nil)}

  def handle_info({:DOWN, ref, :process, _, reason}, ref),
    do: {:stop, {:shutdown, {:registry_down, reason}}, ref}

  def handle_info(_, s), do: {:noreply, s}

  defp watch(_) do
    case Process.whereis(Sagents.Registry) do
      nil ->
        Process.send_after(self(), :poll, 100)
        nil

      pid ->
        Process.monitor(pid)
    end
  end
end

defmodule Horde.Test.Sagents.MembershipManager do
  @moduledoc false
  # Sagents.Horde.MembershipManager (sagents-contract.md 10.2): joins the :pg group, monitors
  # it, and applies the group's node set to every horde with Horde.Cluster.set_members/2
  # (only when it changed); failures are caught and retried on the next :pg event.
  use GenServer
  require Logger

  @scope Sagents.Horde.MembershipScope

  @spec start_link(keyword()) :: GenServer.on_start()
  def start_link(opts \\ []),
    do:
      GenServer.start_link(__MODULE__, nil,
        name: Keyword.get(opts, :name, Sagents.Horde.MembershipManager)
      )

  @spec group_for(term()) :: term()
  def group_for(nil), do: :sagents_members
  def group_for(partition), do: {:sagents_members, partition}

  @spec member_nodes([pid()]) :: [node()]
  def member_nodes(pids), do: pids |> Enum.map(&node/1) |> Enum.uniq() |> Enum.sort()

  @impl true
  def init(nil) do
    group = group_for(Application.get_env(:sagents_shaped, :partition))
    :ok = :pg.join(@scope, group, self())
    {ref, pids} = :pg.monitor(@scope, group)
    members = member_nodes(pids)
    apply_members(members)
    {:ok, %{ref: ref, group: group, members: members}}
  end

  @impl true
  def handle_info({ref, event, _group, _pids}, %{ref: ref} = s) when event in [:join, :leave] do
    members = member_nodes(:pg.get_members(@scope, s.group))

    if members != s.members do
      apply_members(members)
      {:noreply, %{s | members: members}}
    else
      {:noreply, s}
    end
  end

  def handle_info(_, s), do: {:noreply, s}

  defp apply_members(nodes) do
    for horde <- Horde.Test.Sagents.hordes() do
      try do
        :ok = Horde.Cluster.set_members(horde, Enum.map(nodes, &{horde, &1}))
      catch
        kind, reason ->
          Logger.warning("set_members #{inspect(horde)} failed: #{inspect({kind, reason})}")
      end
    end
  end
end

defmodule Horde.Test.Sagents.AgentSupervisor do
  @moduledoc false
  # Sagents.AgentSupervisor: a :transient supervisor registered as {:agent_supervisor, id},
  # with an AgentServer registered as {:agent_server, id} (traps exits).
  use Supervisor

  @spec start_link(keyword()) :: Supervisor.on_start()
  def start_link(opts) do
    id = Keyword.fetch!(opts, :agent_id)
    name = {:via, Horde.Registry, {Sagents.Registry, {:agent_supervisor, id}}}
    Supervisor.start_link(__MODULE__, opts, name: name)
  end

  @doc "Starts it unlinked (no distributed supervisor)."
  @spec start_unlinked(keyword()) :: Supervisor.on_start()
  def start_unlinked(opts) do
    parent = self()

    spawn(fn ->
      result = start_link(opts)
      with {:ok, pid} <- result, do: Process.unlink(pid)
      send(parent, {:started, self(), result})
    end)

    receive do
      {:started, _, result} -> result
    after
      5000 -> {:error, :timeout}
    end
  end

  @impl true
  def init(opts) do
    id = Keyword.fetch!(opts, :agent_id)

    server = %{
      id: :agent_server,
      start:
        {Horde.Test.Worker, :start_link,
         [[name: {:via, Horde.Registry, {Sagents.Registry, {:agent_server, id}}}, trap: true]]},
      restart: :transient,
      shutdown: 5000
    }

    Supervisor.init([server], strategy: :one_for_one)
  end
end
