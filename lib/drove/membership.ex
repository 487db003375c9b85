defmodule Drove.Membership do
  @moduledoc """
  Keeps the members of a list of Drove instances current, for the whole life of
  a node: the `:auto` and `:participation` membership modes of Sagents
  (Horde's `NodeListener` and `Sagents.Horde.MembershipManager`), in one
  process for all instances.

  Every node that runs the instances runs one `Drove.Membership` with the same
  `:instances` (the same names on every node). Each Membership sets members
  only on the instances of its own node; since they all compute the same node
  set, the instances agree. For every member node `n`, each instance `i` gets
  the member `{i, n}`.

  ## Modes

    * `:auto` - the members are this node and every visible node
      (`Node.list(:visible)`), recomputed on every `nodeup` and `nodedown`
      (`:net_kernel.monitor_nodes/2`). Nodes that do not run the instances
      (such as a test runner) are members too, as in Horde; a Drove instance
      only syncs with members that answer, so they cost nothing.
    * `:participation` - the Membership joins the `:pg` group `:drove_members`
      (or `{:drove_members, partition}` when `:partition` is set) with its own
      pid, and the members are the nodes of that group's pids. Only nodes
      that run a Membership with the same partition are members; a node whose
      Membership stops or that goes down leaves the group (`:pg` removes the
      pids of a disconnected node) and is pruned. Nodes with different
      partitions never see each other. The group is watched with
      `:pg.monitor/2` (OTP 25.1 and later); on older releases it is polled on
      `nodeup`/`nodedown` and every `:poll_interval` milliseconds.

  ## Applying a change

  A change is applied only when the node set changed, in one pass over the
  instances: one `Drove.Cluster.set_members/3` call each. When an instance is
  not running, restarting or does not answer, its change is kept and retried
  (after 100 ms, doubling up to 1 s) until it succeeds; a retry always applies
  the latest node set, so no change is lost and no stale one is applied. An
  instance that has been set is monitored: if it exits (a supervisor restarts
  it with a self-only member list), the current set is applied again to the
  new process.

  ## The `:pg` scope

  The scope (`Drove.Membership.Scope` by default) must run on every node. Put
  `Drove.Membership.scope_spec/1` before the Membership in your supervision
  tree; when the scope is not running at start, the Membership starts it
  itself, linked, and stops it when it stops.

      children = [
        MyApp.Registry,
        MyApp.Supervisor,
        Drove.Membership.scope_spec(),
        {Drove.Membership,
         name: MyApp.Membership,
         instances: [MyApp.Registry, MyApp.Supervisor],
         mode: :participation}
      ]

  On a graceful stop the Membership leaves its group first, so the other
  nodes drop this node at once instead of at `nodedown`.
  """

  use GenServer

  require Logger

  @default_scope Drove.Membership.Scope
  @group :drove_members
  @retry_initial 100
  @retry_max 1000
  @options [
    :instances,
    :mode,
    :partition,
    :scope,
    :name,
    :call_timeout,
    :poll_interval,
    :pg_monitor
  ]

  @typedoc """
  Options of `start_link/1`:

    * `:instances` (required) - the names (atoms) of the Drove instances whose
      members this process sets; the same names on every node.
    * `:mode` - `:auto` (default; `nil` means `:auto`) or `:participation`.
    * `:partition` - any term but `nil`; only with `mode: :participation`.
      Nodes with different partitions are never members of each other.
    * `:scope` - the `:pg` scope, an atom (default `Drove.Membership.Scope`).
    * `:name` - a name to register this process under (`GenServer` name).
    * `:call_timeout` - milliseconds (or `:infinity`) to wait for an instance
      to accept its members (default 5000); a timeout is retried like a
      missing instance.
    * `:pg_monitor` - `true` to watch the `:pg` group with `:pg.monitor/2`
      (the default when it exists, OTP 25.1 and later), `false` to poll it
      instead, on `nodeup`/`nodedown` and every `:poll_interval` ms.
    * `:poll_interval` - milliseconds between polls of the `:pg` group when it
      is polled (default 1000).
  """
  @type option ::
          {:instances, [atom()]}
          | {:mode, :auto | :participation | nil}
          | {:partition, term()}
          | {:scope, atom()}
          | {:name, GenServer.name()}
          | {:call_timeout, timeout()}
          | {:poll_interval, pos_integer()}
          | {:pg_monitor, boolean()}

  @doc """
  Starts a Membership linked to the caller. See `t:option/0` for the options.

  Raises `ArgumentError` with a sentence saying what is accepted when an
  option is missing, unknown or invalid (for example `:partition` with
  `mode: :auto`).
  """
  @spec start_link([option()]) :: GenServer.on_start()
  def start_link(opts) do
    config = validate!(opts)
    gen_opts = if config.name, do: [name: config.name], else: []
    GenServer.start_link(__MODULE__, config, gen_opts)
  end

  @doc """
  A child specification; the child id is the `:name` option, or this module.
  """
  @spec child_spec([option()]) :: Supervisor.child_spec()
  def child_spec(opts) do
    id = if Keyword.keyword?(opts), do: Keyword.get(opts, :name), else: nil

    %{
      id: id || __MODULE__,
      start: {__MODULE__, :start_link, [opts]},
      type: :worker,
      shutdown: 5000
    }
  end

  @doc """
  A child specification for the `:pg` scope `scope` (default
  `Drove.Membership.Scope`), to start it before the Memberships that use it.
  """
  @spec scope_spec(atom()) :: Supervisor.child_spec()
  def scope_spec(scope \\ @default_scope) when is_atom(scope) do
    %{id: {:pg, scope}, start: {:pg, :start_link, [scope]}, type: :worker}
  end

  @doc "The default `:pg` scope, `Drove.Membership.Scope`."
  @spec default_scope() :: atom()
  def default_scope, do: @default_scope

  @doc """
  The `:pg` group of a partition: `:drove_members` for `nil`, otherwise
  `{:drove_members, partition}`.
  """
  @spec group(term()) :: term()
  def group(nil), do: @group
  def group(partition), do: {@group, partition}

  @doc """
  The current member nodes of `membership`, sorted (the list that was, or is
  being, applied to the instances).
  """
  @spec members(GenServer.server()) :: [node()]
  def members(membership), do: GenServer.call(membership, :members)

  @doc """
  The instances whose current members have not been applied yet (not running,
  restarting or not answering); they are being retried.
  """
  @spec pending(GenServer.server()) :: [atom()]
  def pending(membership), do: GenServer.call(membership, :pending)

  # ---------------------------------------------------------------------------
  # Configuration

  defp validate!(opts) do
    unless Keyword.keyword?(opts) do
      raise ArgumentError,
            "Drove.Membership expects a keyword list of options, got: #{inspect(opts)}"
    end

    case Keyword.keys(opts) -- @options do
      [] ->
        :ok

      unknown ->
        raise ArgumentError,
              "unknown Drove.Membership option(s) #{inspect(Enum.uniq(unknown))}; " <>
                "the accepted options are #{Enum.map_join(@options, ", ", &inspect/1)}"
    end

    instances = Keyword.get(opts, :instances)

    unless is_list(instances) and instances != [] and
             Enum.all?(instances, &(is_atom(&1) and &1 not in [nil, true, false])) do
      raise ArgumentError,
            "the :instances option of Drove.Membership must be a non-empty list of " <>
              "instance names (atoms), the same on every node, got: #{inspect(instances)}"
    end

    mode =
      case Keyword.get(opts, :mode) do
        nil ->
          :auto

        mode when mode in [:auto, :participation] ->
          mode

        other ->
          raise ArgumentError,
                "the :mode option of Drove.Membership must be :auto or :participation " <>
                  "(nil means :auto), got: #{inspect(other)}"
      end

    partition = Keyword.get(opts, :partition)

    if partition != nil and mode != :participation do
      raise ArgumentError,
            ":partition only applies to :participation (got mode: #{inspect(mode)} with " <>
              "partition: #{inspect(partition)}); remove :partition or use mode: :participation"
    end

    scope = Keyword.get(opts, :scope, @default_scope)

    unless is_atom(scope) and scope not in [nil, true, false] do
      raise ArgumentError,
            "the :scope option of Drove.Membership must be the name (an atom) of a :pg " <>
              "scope, got: #{inspect(scope)}"
    end

    call_timeout = Keyword.get(opts, :call_timeout, 5000)

    unless call_timeout == :infinity or (is_integer(call_timeout) and call_timeout > 0) do
      raise ArgumentError,
            "the :call_timeout option of Drove.Membership must be a positive integer " <>
              "(milliseconds) or :infinity, got: #{inspect(call_timeout)}"
    end

    poll_interval = Keyword.get(opts, :poll_interval, 1000)

    unless is_integer(poll_interval) and poll_interval > 0 do
      raise ArgumentError,
            "the :poll_interval option of Drove.Membership must be a positive integer " <>
              "(milliseconds), got: #{inspect(poll_interval)}"
    end

    pg_monitor = Keyword.get_lazy(opts, :pg_monitor, &pg_monitor_available?/0)

    cond do
      not is_boolean(pg_monitor) ->
        raise ArgumentError,
              "the :pg_monitor option of Drove.Membership must be true or false, " <>
                "got: #{inspect(pg_monitor)}"

      pg_monitor and not pg_monitor_available?() ->
        raise ArgumentError,
              "pg_monitor: true needs :pg.monitor/2 (OTP 25.1 or later); " <>
                "use pg_monitor: false to poll the :pg group"

      true ->
        :ok
    end

    %{
      instances: Enum.uniq(instances),
      mode: mode,
      partition: partition,
      group: group(partition),
      scope: scope,
      name: Keyword.get(opts, :name),
      call_timeout: call_timeout,
      poll_interval: poll_interval,
      pg_monitor: pg_monitor
    }
  end

  # ---------------------------------------------------------------------------
  # Server

  @impl true
  def init(config) do
    # Exits of the parent (supervisor shutdown) run terminate/2, which leaves the group.
    Process.flag(:trap_exit, true)

    state =
      Map.merge(config, %{
        nodes: [],
        pending: config.instances,
        # instance => {pid, monitor ref} of the process that last accepted its members
        monitors: %{},
        failing: MapSet.new(),
        retry_timer: nil,
        retry_delay: @retry_initial,
        scope_pid: nil,
        scope_ref: nil,
        owns_scope: false,
        pg_ref: nil,
        polling: false
      })

    state = if config.mode == :auto, do: init_auto(state), else: init_participation(state)
    {:ok, %{state | nodes: member_nodes(candidates(state))}, {:continue, :apply}}
  end

  defp init_auto(state) do
    monitor_nodes()
    state
  end

  defp init_participation(state) do
    {scope_pid, owns} = ensure_scope(state.scope)

    state = %{
      state
      | scope_pid: scope_pid,
        owns_scope: owns,
        scope_ref: Process.monitor(scope_pid)
    }

    :ok = :pg.join(state.scope, state.group, self())

    if state.pg_monitor do
      {ref, _pids} = :pg.monitor(state.scope, state.group)
      %{state | pg_ref: ref}
    else
      monitor_nodes()
      schedule_poll(%{state | polling: true})
    end
  end

  defp ensure_scope(scope) do
    case Process.whereis(scope) do
      nil ->
        case :pg.start_link(scope) do
          {:ok, pid} -> {pid, true}
          {:error, {:already_started, pid}} -> {pid, false}
        end

      pid ->
        {pid, false}
    end
  end

  defp pg_monitor_available? do
    Code.ensure_loaded?(:pg) and function_exported?(:pg, :monitor, 2)
  end

  defp monitor_nodes do
    case :net_kernel.monitor_nodes(true, node_type: :visible) do
      :ok ->
        :ok

      error ->
        Logger.warning("Drove.Membership: cannot monitor nodes: #{inspect(error)}")
    end
  end

  defp schedule_poll(state) do
    Process.send_after(self(), :poll, state.poll_interval)
    state
  end

  @impl true
  def handle_continue(:apply, state), do: {:noreply, apply_pending(state)}

  @impl true
  def handle_call(:members, _from, state), do: {:reply, state.nodes, state}
  def handle_call(:pending, _from, state), do: {:reply, state.pending, state}

  @impl true
  def handle_info({ref, event, _group, _pids}, %{pg_ref: ref} = state)
      when event in [:join, :leave] do
    {:noreply, recompute(state)}
  end

  def handle_info({event, _node, _info}, state) when event in [:nodeup, :nodedown] do
    {:noreply, recompute(state)}
  end

  def handle_info(:poll, %{polling: true} = state) do
    {:noreply, state |> recompute() |> schedule_poll()}
  end

  def handle_info(:retry, state) do
    delay = min(state.retry_delay * 2, @retry_max)
    {:noreply, apply_pending(%{state | retry_timer: nil, retry_delay: delay})}
  end

  def handle_info({:DOWN, ref, :process, _pid, reason}, %{scope_ref: ref} = state) do
    {:stop, {:scope_down, reason}, %{state | scope_pid: nil, scope_ref: nil, owns_scope: false}}
  end

  def handle_info({:DOWN, ref, :process, _pid, _reason} = msg, state) do
    case Enum.find(state.monitors, fn {_instance, {_pid, r}} -> r == ref end) do
      {instance, _} ->
        # The instance exited: its next incarnation starts without our members.
        state = %{state | monitors: Map.delete(state.monitors, instance)}
        {:noreply, apply_pending(%{state | pending: add_pending(state, [instance])})}

      nil ->
        Logger.debug("Drove.Membership: unexpected message #{inspect(msg)}")
        {:noreply, state}
    end
  end

  def handle_info({:EXIT, pid, reason}, %{scope_pid: pid} = state) do
    {:stop, {:scope_down, reason}, %{state | scope_pid: nil, scope_ref: nil, owns_scope: false}}
  end

  def handle_info(msg, state) do
    Logger.debug("Drove.Membership: unexpected message #{inspect(msg)}")
    {:noreply, state}
  end

  @impl true
  def terminate(_reason, state) do
    if state.mode == :participation and state.scope_pid != nil do
      # Leave first, so that the other nodes drop this one at once.
      _ = safely(fn -> :pg.leave(state.scope, state.group, self()) end)

      if state.owns_scope do
        _ = safely(fn -> :gen_server.stop(state.scope_pid, :shutdown, 5000) end)
      end
    end

    :ok
  end

  defp safely(fun) do
    fun.()
  catch
    kind, reason -> {kind, reason}
  end

  # ---------------------------------------------------------------------------
  # Computing and applying the node set

  defp candidates(%{mode: :auto}), do: Node.list(:visible)

  defp candidates(%{mode: :participation} = state) do
    for pid <- :pg.get_members(state.scope, state.group), do: node(pid)
  end

  # Sorted, de-duplicated, this node included (members.c via the NIF). Node names are
  # compared as their UTF-8 text, which is the order Erlang gives atoms.
  defp member_nodes(candidates) do
    candidates
    |> Enum.map(&Atom.to_string/1)
    |> Drove.Native.members_set(Atom.to_string(node()))
    |> Enum.map(&String.to_existing_atom/1)
  end

  defp recompute(state) do
    nodes = member_nodes(candidates(state))

    case Drove.Native.members_diff(node_names(state.nodes), node_names(nodes)) do
      {[], []} ->
        state

      {added, removed} ->
        Drove.Telemetry.membership(state.instances, state.mode, nodes, added, removed)

        Logger.debug(
          "Drove.Membership: members #{inspect(nodes)} (added #{inspect(added)}, " <>
            "removed #{inspect(removed)})"
        )

        apply_pending(%{state | nodes: nodes, pending: state.instances})
    end
  end

  defp node_names(nodes), do: Enum.map(nodes, &Atom.to_string/1)

  defp add_pending(state, instances) do
    Enum.filter(state.instances, &(&1 in instances or &1 in state.pending))
  end

  # One pass over the instances that have not accepted the current node set.
  defp apply_pending(%{pending: []} = state), do: schedule_retry(state)

  defp apply_pending(state) do
    {failed, state} =
      Enum.reduce(state.pending, {[], state}, fn instance, {failed, state} ->
        members = for n <- state.nodes, do: {instance, n}

        case apply_one(instance, members, state) do
          {:ok, state} ->
            {failed, %{state | failing: MapSet.delete(state.failing, instance)}}

          {{:error, reason}, state} ->
            log_failure(state, instance, reason)
            {[instance | failed], %{state | failing: MapSet.put(state.failing, instance)}}
        end
      end)

    schedule_retry(%{state | pending: Enum.reverse(failed)})
  end

  defp apply_one(instance, members, state) do
    case Process.whereis(instance) do
      nil ->
        {{:error, :noproc}, state}

      pid ->
        state = monitor_instance(state, instance, pid)

        result =
          try do
            Drove.Cluster.set_members(pid, members, state.call_timeout)
          catch
            :exit, reason -> {:error, reason}
          end

        case result do
          :ok -> {:ok, state}
          {:error, _} = error -> {error, state}
        end
    end
  end

  defp monitor_instance(state, instance, pid) do
    case state.monitors do
      %{^instance => {^pid, _ref}} ->
        state

      monitors ->
        case monitors do
          %{^instance => {_old, old_ref}} -> Process.demonitor(old_ref, [:flush])
          _ -> :ok
        end

        %{state | monitors: Map.put(monitors, instance, {pid, Process.monitor(pid)})}
    end
  end

  defp log_failure(state, instance, reason) do
    # One warning per failure streak; the retries log at debug level.
    level = if MapSet.member?(state.failing, instance), do: :debug, else: :warning

    Logger.log(
      level,
      "Drove.Membership: could not set the members of #{inspect(instance)} " <>
        "(#{inspect(reason)}); retrying"
    )
  end

  defp schedule_retry(%{pending: []} = state) do
    if state.retry_timer, do: Process.cancel_timer(state.retry_timer)
    %{state | retry_timer: nil, retry_delay: @retry_initial}
  end

  defp schedule_retry(%{retry_timer: nil} = state) do
    %{state | retry_timer: Process.send_after(self(), :retry, state.retry_delay)}
  end

  defp schedule_retry(state), do: state
end
