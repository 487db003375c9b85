defmodule Drove.DynamicSupervisor do
  @moduledoc """
  A distributed dynamic supervisor with the API of `Horde.DynamicSupervisor`: children are
  placed on the members of a cluster by a distribution strategy, tracked in Drove's
  replicated C delta-CRDT, restarted on their node by an ordinary OTP `DynamicSupervisor`, and
  handed to a survivor when their node dies or stops.

      children = [
        {Drove.DynamicSupervisor, name: MyApp.Sup, strategy: :one_for_one, members: :auto}
      ]

      {:ok, pid} = Drove.DynamicSupervisor.start_child(MyApp.Sup, {MyWorker, arg})

  ## Processes

  `start_link/1` starts `:"\#{name}.Supervisor"` (`:one_for_all`, no restarts: a crash of
  one part takes the local instance down and peers take over its children), with:

    * the instance process, registered as `name`: it owns the replica, the member view
      and the child table, and answers `Drove.Cluster` calls and `:sys.get_state/1`
      (a map with `:members` and `:members_info`, as Horde's);
    * `:"\#{name}.ProcessesSupervisor"`, an OTP `DynamicSupervisor` that runs this node's
      children with the `max_restarts`, `max_seconds` and `max_children` given;
    * a shutdown signal process: on a graceful stop it marks this member `:shutting_down`
      before the children are stopped, so each stopped child is handed to a survivor.

  ## Children

  Each `start_child/2` gets a random 128-bit child id, kept for the child's whole life:
  through local restarts, failover to another node and graceful handoff. The replicated
  entry is `{:child, id} => {owner, child_spec, pid}`. `which_children/1` lists children
  as `{:undefined, pid, type, modules}`, as Horde does.

  Restart rules are `DynamicSupervisor`'s on the owning node: a `:permanent` child, or a
  `:transient` child that exits abnormally, restarts there; a `:transient` child that exits
  `:normal`, `:shutdown` or `{:shutdown, _}`, and a `:temporary` child, are removed from the
  cluster and never restarted anywhere.

  When a member's node goes down or its instance dies, every node sees its children as
  orphaned and runs the distribution strategy over the `:alive` members; the node it picks
  starts the child under the same id. A graceful stop (`:init.stop/0`, `stop/3`, a parent
  supervisor stopping) marks the member `:shutting_down`, stops its children with
  `:shutdown` and relinquishes each one; the instance then pushes its last writes and waits
  (up to 5 s) until each peer has them before it exits. If that push is lost anyway, the
  children are taken over as a dead member's would be.

  ## State handoff

  A child whose spec has `handoff: true` keeps its state when it moves on a graceful stop
  or under `process_redistribution: :active` (Horde moves processes, never their state):

    1. just before the move, the instance calls the child `GenServer.call(pid, {:drove,
       :begin_handoff}, shutdown)`: it answers `{:resume, state}` to hand its state over,
       or `:restart` to start fresh;
    2. the state is written into the child's replicated entry and pushed to the other
       members; then the child is stopped and its entry handed over;
    3. the member that takes it over starts it from its spec as usual and casts it
       `{:drove, :end_handoff, state}` before it writes the entry that names the new pid:
       nothing the supervisor shows (the entry on any node, `which_children/1`) names the
       new instance before the cast is sent. That write drops the state from the entry.
       A child that registers a name in its own `init` (a `:via` name) can be found by it
       from then on: a message sent through that name in the short window before the
       cast arrives before the state.

  The state is delivered once: a restart of the new instance starts from its spec. If the
  stopping node dies after the state was pushed, the member that takes the child over
  still delivers it; if it dies before (while the child answers, or before the push
  left), the child restarts fresh, as a child of a dead node does. If the new node dies
  before it delivered the state, the next one delivers it. Only if two members disagree
  on the member list for a moment (a netsplit) can each take the same entry over and
  cast the state to its copy; one copy is then stopped, as any duplicate is.

  A child that does not answer within its `shutdown` time (`:brutal_kill`: it is not
  asked; `:infinity`: no bound) moves without state, and so does a state larger than
  `handoff_max_bytes` (`:erlang.external_size/1`; default 4 MiB); both are logged. After
  its answer the child is stopped at once: requests it handles in between are not in the
  state it handed over. `use GenServer`'s `child_spec/1` does not accept `handoff:`;
  write the spec as a map or `Map.put(Mod.child_spec(arg), :handoff, true)`.

  ## Where Drove deliberately differs from Horde

    * Child ids survive failover and handoff (Horde gives a taken-over child a new random
      id, and stale entries can remain, horde#207).
    * Failover does not depend on the order in which a member is removed and marked dead:
      a child is taken over when its owner is gone (its node disconnected or its instance
      down, as this node observes it), whatever the member list says. A member removed
      from the list while alive keeps its children.
    * After a netsplit heals, each child id runs once: the replicated entry has one owner
      (last writer wins by hybrid logical clock), and any other node running that id stops
      its copy quietly (Horde leaves both running, horde#196).
    * `start_child/2` runs in the caller and calls the chosen node's `DynamicSupervisor`
      directly: the instance process is never blocked by a child's `init`, and a call to a
      node that dies returns or re-places instead of hanging (horde#233). It returns
      `{:ok, pid}` only once another member than the child's node holds the child's entry
      (the caller's own node when the child runs elsewhere, as the entry's push arrives;
      a peer's acknowledgement, pinged as the entry is pushed and shared by the starts
      that come meanwhile, when it runs on the caller's node), so the child survives the
      loss of its node right after. The node's `DynamicSupervisor` does not wait for that:
      it goes on with the next start.
    * `terminate_child/2` returns only `:ok` or `{:error, :not_found}`; a child on a node
      that went away is `{:error, :not_found}`.
    * `which_children/1` and `count_children/1` ask all members at once with a 5 s bound;
      a member that does not answer is skipped (Horde calls each with `:infinity`). With no
      answer at all, `count_children/1` returns zero counts, not `%{}`.
    * A membership change costs work proportional to the children that move, not to all
      children in the cluster.
    * `proxy_message_ttl` is accepted and ignored: there are no proxy hops.
    * Losing quorum (with `Drove.Distribution.UniformQuorum`) refuses new children
      (`{:error, :quorum_not_met}`) but does not stop running ones.
  """

  alias Drove.Address
  alias Drove.DynamicSupervisor.{Impl, Tree}

  @typedoc """
  A supervisor instance, addressed as OTP addresses a server: its local name, `{name, node}`,
  a pid (of the instance, or of the top supervisor `start_link/1` returns), `{:global, term}`
  or `{:via, module, term}`. An instance on another node is called there.
  """
  @type supervisor ::
          atom() | {atom(), node()} | pid() | {:global, term()} | {:via, module(), term()}

  @typedoc "Options of `start_link/1` and of the flags `init/1` returns."
  @type option ::
          {:name, atom()}
          | {:strategy, :one_for_one}
          | {:members, :auto | [atom() | {atom(), node()}]}
          | {:distribution_strategy, module()}
          | {:max_restarts, non_neg_integer()}
          | {:max_seconds, pos_integer()}
          | {:max_children, non_neg_integer() | :infinity}
          | {:extra_arguments, list()}
          | {:process_redistribution, :passive | :active}
          | {:sync_interval, pos_integer()}
          | {:member_struct, module()}
          | {:handoff_max_bytes, pos_integer()}

  @callback init(init_arg :: term()) :: {:ok, map() | keyword()} | :ignore

  defmacro __using__(_opts) do
    quote location: :keep do
      @behaviour Drove.DynamicSupervisor

      @doc false
      def child_spec(arg) do
        %{id: __MODULE__, start: {__MODULE__, :start_link, [arg]}, type: :supervisor}
      end

      defoverridable child_spec: 1
    end
  end

  @doc """
  A child spec for starting the supervisor under a supervision tree; `opts` are those of
  `start_link/1`.
  """
  @spec child_spec([option()]) :: Supervisor.child_spec()
  def child_spec(opts) when is_list(opts) do
    %{
      id: Keyword.get(opts, :id, Keyword.get(opts, :name, __MODULE__)),
      start: {__MODULE__, :start_link, [Keyword.delete(opts, :id)]},
      type: :supervisor
    }
  end

  @doc """
  Starts a supervisor instance named `opts[:name]` with the options of `init/1`.
  Returns the pid of its top supervisor, `:"\#{name}.Supervisor"`.
  """
  @spec start_link([option()]) :: Supervisor.on_start()
  def start_link(opts) when is_list(opts) do
    # invalid options raise here, in the caller, rather than crash the new supervisor
    {:ok, _} = Drove.DynamicSupervisor.Default.init(opts)
    start_link(Drove.DynamicSupervisor.Default, opts, opts)
  end

  @doc """
  Starts a module-based supervisor instance: `mod.init(init_arg)` returns the flags (see
  `init/1`); `opts` gives the `:name`.
  """
  @spec start_link(module(), term(), keyword()) :: Supervisor.on_start()
  def start_link(mod, init_arg, opts) when is_atom(mod) and is_list(opts) do
    name =
      case Keyword.get(opts, :name) do
        n when is_atom(n) and n != nil ->
          n

        other ->
          raise ArgumentError,
                "a Drove.DynamicSupervisor needs a :name that is an atom, got: #{inspect(other)}"
      end

    Supervisor.start_link(Tree, {mod, init_arg, name}, name: Tree.name(name))
  end

  @doc """
  Validates the flags of a supervisor and returns `{:ok, flags}`, for a module's `init/1`.

  `:strategy` is required and must be `:one_for_one`. The others, with their defaults:
  `members: []` (plus itself) or `:auto`, `distribution_strategy:
  Drove.Distribution.Uniform`, `max_restarts: 3`, `max_seconds: 5`, `max_children:
  :infinity`, `extra_arguments: []`, `process_redistribution: :passive`, `sync_interval:
  500`, `handoff_max_bytes: 4_194_304` (the largest state a `handoff: true` child may hand
  over, see "State handoff"). Horde's `delta_crdt_options` (its `sync_interval` is used), `proxy_message_ttl` and
  `shutdown` are accepted.
  """
  @spec init([option()]) :: {:ok, map()}
  def init(opts) do
    {:ok, Impl.flags!(opts)}
  end

  @doc """
  Starts a child somewhere in the cluster.

  The child spec is normalized with `Supervisor.child_spec/2`, the distribution strategy
  picks an `:alive` member, and that member's `DynamicSupervisor` starts it. Returns what
  the child's start returns (`{:ok, pid}`, `{:ok, pid, info}`, `:ignore`, `{:error,
  reason}`), or `{:error, :no_alive_nodes}`, `{:error, :quorum_not_met}`, `{:error,
  {:shutting_down, msg}}` (this node is stopping), `{:error, :max_children}`, or `{:error,
  {:node_dead_or_shutting_down, msg}}` when the chosen members kept going away.
  """
  @spec start_child(supervisor(), Supervisor.child_spec() | {module(), term()} | module()) ::
          DynamicSupervisor.on_start_child() | {:error, term()}
  def start_child(sup, child_spec) do
    spec = Supervisor.child_spec(child_spec, [])

    on_instance(sup, :start_child, [spec], fn name ->
      Drove.Telemetry.timed([:drove, :supervisor, :start_child], %{supervisor: name}, fn ->
        Impl.start_child(name, spec)
      end)
    end)
  end

  @doc """
  Terminates the child `pid`, wherever it runs, and removes it from the cluster.
  Returns `:ok`, or `{:error, :not_found}` when `pid` is not a child (or its node is gone).
  """
  @spec terminate_child(supervisor(), pid()) :: :ok | {:error, :not_found}
  def terminate_child(sup, pid) when is_pid(pid) do
    on_instance(sup, :terminate_child, [pid], &Impl.terminate_child(&1, pid))
  end

  @doc """
  Lists the children of every reachable member as `{:undefined, pid | :restarting, type,
  modules}`. A member that does not answer within 5 s is skipped.
  """
  @spec which_children(supervisor()) :: [
          {:undefined, pid() | :restarting, :worker | :supervisor, [module()] | :dynamic}
        ]
  def which_children(sup), do: on_instance(sup, :which_children, [], &Impl.which_children/1)

  @doc """
  Sums `DynamicSupervisor.count_children/1` over every reachable member:
  `%{specs: n, active: n, supervisors: n, workers: n}`.
  """
  @spec count_children(supervisor()) :: %{
          specs: non_neg_integer(),
          active: non_neg_integer(),
          supervisors: non_neg_integer(),
          workers: non_neg_integer()
        }
  def count_children(sup), do: on_instance(sup, :count_children, [], &Impl.count_children/1)

  @doc """
  Returns `:ok` once the distribution strategy reports quorum; exits like
  `GenServer.call/3` after `timeout`.
  """
  @spec wait_for_quorum(supervisor(), timeout()) :: :ok
  def wait_for_quorum(sup, timeout), do: GenServer.call(sup, :wait_for_quorum, timeout)

  @doc """
  Stops the supervisor instance gracefully: its children are handed to the other members.
  """
  @spec stop(supervisor(), term(), timeout()) :: :ok
  def stop(sup, reason \\ :normal, timeout \\ :infinity) do
    # the name of the top supervisor (:"name.Supervisor") is accepted too
    target = (is_atom(sup) && Process.whereis(sup)) || sup
    {name, node} = Address.resolve!(target, {__MODULE__, :stop, [sup, reason, timeout]})
    Supervisor.stop({Tree.name(name), node}, reason, timeout)
  end

  # Runs `local` with the instance's name when it runs on this node; otherwise the same
  # function on the instance's node, as Horde's call to a remote instance would.
  defp on_instance(sup, fun, args, local) do
    case Address.resolve!(sup, {__MODULE__, fun, [sup | args]}) do
      {name, node} when node == node() ->
        local.(name)

      {name, node} ->
        try do
          :erpc.call(node, __MODULE__, fun, [name | args], :infinity)
        catch
          :error, {:erpc, reason} -> exit({reason, {__MODULE__, fun, [sup | args]}})
          :error, {:exception, exception, stack} -> reraise exception, stack
          :exit, {:exception, reason} -> exit(reason)
        end
    end
  end
end

defmodule Drove.DynamicSupervisor.Default do
  @moduledoc false
  # init/1 of a supervisor started with start_link/1: the options are the flags.
  @spec init(keyword()) :: {:ok, map()}
  def init(opts), do: Drove.DynamicSupervisor.init(Keyword.delete(opts, :name))
end
