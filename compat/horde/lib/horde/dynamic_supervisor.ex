defmodule Horde.DynamicSupervisor do
  @moduledoc """
  Horde 0.10's `Horde.DynamicSupervisor` API, served by `Drove.DynamicSupervisor`.

  Every function has Horde's name, arity and return shape. The supervisor is registered
  locally under its name, its local tree is `:"\#{name}.Supervisor"`, and
  `:sys.get_state(name)` is a map with `:members` and `:members_info`
  (`%{{name, node} => %Horde.DynamicSupervisor.Member{status: status}}`).

      defmodule MyApp.Supervisor do
        use Horde.DynamicSupervisor

        def start_link(init_arg),
          do: Horde.DynamicSupervisor.start_link(__MODULE__, init_arg, name: __MODULE__)

        @impl true
        def init(init_arg) do
          [strategy: :one_for_one, members: :auto]
          |> Keyword.merge(init_arg)
          |> Horde.DynamicSupervisor.init()
        end
      end

  Children follow Horde's rules: a child that exits abnormally is restarted on its node; a
  `:transient` or `:temporary` child that exits `:normal`, `:shutdown` or `{:shutdown, _}`
  is never restarted anywhere; on a graceful stop of a node its children are handed to the
  others; on the loss of a node its children are started where the distribution strategy
  places them. Where Drove deliberately differs is listed in `docs/migrating-from-horde.md`.
  """

  @type options :: [option()]
  @type option ::
          {:name, atom()}
          | {:strategy, :one_for_one}
          | {:max_restarts, non_neg_integer()}
          | {:max_seconds, pos_integer()}
          | {:max_children, non_neg_integer() | :infinity}
          | {:extra_arguments, [term()]}
          | {:distribution_strategy, Horde.DistributionStrategy.t()}
          | {:shutdown, timeout()}
          | {:members, [Horde.Cluster.member()] | :auto}
          | {:delta_crdt_options, keyword()}
          | {:process_redistribution, :active | :passive}
          | {:proxy_message_ttl, non_neg_integer() | :infinity}

  @callback init(options()) :: {:ok, map() | options()} | :ignore
  @callback child_spec(options :: options()) :: Supervisor.child_spec()

  # init/1's options; the rest of start_link/1's options are start options (:name)
  @init_keys [
    :extra_arguments,
    :max_children,
    :max_seconds,
    :max_restarts,
    :strategy,
    :distribution_strategy,
    :process_redistribution,
    :members,
    :delta_crdt_options,
    :proxy_message_ttl,
    :shutdown,
    :member_struct
  ]

  defmacro __using__(options), do: Horde.Using.quoted(__MODULE__, options)

  @doc "A child spec: id is the `:name` option (or `Horde.DynamicSupervisor`), a supervisor."
  @spec child_spec(options()) :: Supervisor.child_spec()
  def child_spec(options) when is_list(options) do
    %{
      id: Keyword.get(options, :name, Horde.DynamicSupervisor),
      start: {Horde.DynamicSupervisor, :start_link, [options]},
      type: :supervisor
    }
  end

  @doc """
  Starts a supervisor with the options of `init/1` and `:name` (required).
  """
  @spec start_link(options()) :: Supervisor.on_start()
  def start_link(options) when is_list(options) do
    {init_options, start_options} = Keyword.split(options, @init_keys)
    start_link(Horde.DynamicSupervisor.Default, init(init_options), start_options)
  end

  @doc """
  Starts a module-based supervisor: `module.init(init_arg)` returns `init/1`'s result or
  `:ignore`. `opts` takes `:name`.
  """
  @spec start_link(module(), term(), keyword()) :: Supervisor.on_start()
  def start_link(module, init_arg, opts \\ []),
    do: Drove.DynamicSupervisor.start_link(module, init_arg, opts)

  @doc """
  Validates supervisor options, like `DynamicSupervisor.init/1`: `:strategy` is required
  (`:one_for_one`); `members` (`:auto` or a list, default: itself), `distribution_strategy`
  (default `Horde.UniformDistribution`), `max_restarts` (3), `max_seconds` (5),
  `max_children` (`:infinity`), `extra_arguments` (`[]`), `process_redistribution`
  (`:passive`), `delta_crdt_options`, `proxy_message_ttl` and `shutdown` are accepted.
  Members are shown to strategies and in `:sys.get_state/1` as
  `Horde.DynamicSupervisor.Member` structs. Drove's `sync_interval`, `max_message_bytes` and
  `handoff_max_bytes` are kept; other options are ignored, as Horde does. A child moves
  without its state, as in Horde, unless its child spec has `handoff: true` (see
  `Drove.DynamicSupervisor`, "State handoff"). Returns `{:ok, flags}`.
  """
  @spec init(options()) :: {:ok, map()}
  def init(options) when is_list(options) do
    unless options[:strategy] do
      raise ArgumentError, "expected :strategy option to be given"
    end

    # as Horde, options it does not know are ignored (a module's init/1 may pass its whole
    # argument); Drove's own tuning options are kept
    options
    |> Keyword.take(@init_keys ++ [:sync_interval, :max_message_bytes, :handoff_max_bytes])
    |> Keyword.put_new(:distribution_strategy, Horde.UniformDistribution)
    |> Keyword.put_new(:member_struct, Horde.DynamicSupervisor.Member)
    |> Keyword.put(:horde_telemetry, true)
    |> Drove.DynamicSupervisor.init()
  end

  @doc """
  Stops the supervisor's local tree gracefully: its children are handed to the other
  members.
  """
  @spec stop(atom(), term(), timeout()) :: :ok
  def stop(supervisor, reason \\ :normal, timeout \\ :infinity),
    do: Drove.DynamicSupervisor.stop(supervisor, reason, timeout)

  @doc """
  Starts a child on the member the distribution strategy chooses (possibly another node).
  Returns `{:ok, pid}`, `{:ok, pid, info}`, `:ignore` or `{:error, reason}` as the child's
  start does, or `{:error, reason}` from the supervisor: `{:shutting_down, message}` on a
  node that is stopping, `:no_alive_nodes`, `:quorum_not_met`,
  `{:node_dead_or_shutting_down, message}`.
  """
  @spec start_child(
          Supervisor.supervisor(),
          Supervisor.child_spec() | {module(), term()} | module()
        ) ::
          DynamicSupervisor.on_start_child()
  def start_child(supervisor, child_spec),
    do: Drove.DynamicSupervisor.start_child(supervisor, child_spec)

  @doc "Terminates a child on any node: `:ok` or `{:error, :not_found}`."
  @spec terminate_child(Supervisor.supervisor(), pid()) ::
          :ok | {:error, :not_found} | {:error, {:node_dead_or_shutting_down, String.t()}}
  def terminate_child(supervisor, child_pid) when is_pid(child_pid),
    do: Drove.DynamicSupervisor.terminate_child(supervisor, child_pid)

  @doc "The children on every member: `[{:undefined, pid | :restarting, type, modules}]`."
  @spec which_children(Supervisor.supervisor()) :: [
          {:undefined, pid() | :restarting, :worker | :supervisor, [module()] | :dynamic}
        ]
  def which_children(supervisor), do: Drove.DynamicSupervisor.which_children(supervisor)

  @doc "The counts summed over every member: `%{specs:, active:, supervisors:, workers:}`."
  @spec count_children(Supervisor.supervisor()) :: %{
          specs: non_neg_integer(),
          active: non_neg_integer(),
          supervisors: non_neg_integer(),
          workers: non_neg_integer()
        }
  def count_children(supervisor), do: Drove.DynamicSupervisor.count_children(supervisor)

  @doc "Waits until the distribution strategy reports quorum; `:ok`."
  @spec wait_for_quorum(GenServer.server(), timeout()) :: :ok
  def wait_for_quorum(horde, timeout), do: Drove.DynamicSupervisor.wait_for_quorum(horde, timeout)
end

defmodule Horde.DynamicSupervisor.Default do
  @moduledoc false
  # The module of a supervisor started with start_link/1: init/1's result is its argument.

  @spec init({:ok, map()}) :: {:ok, map()}
  def init({:ok, flags}), do: {:ok, flags}
end
