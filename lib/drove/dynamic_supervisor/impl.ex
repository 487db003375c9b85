defmodule Drove.DynamicSupervisor.Impl do
  @moduledoc false
  # The instance process of a Drove.DynamicSupervisor, registered under its name.
  #
  # Replica keys: see Drove.DynamicSupervisor.Entry.
  #
  # Liveness is observed, never replicated: a member is :dead for this node when its node is
  # not connected or its instance process (the pid in its info) went down. Everything that
  # depends on liveness (placement of orphaned children) is recomputed here from the
  # replicated entries, so every node reaches the same decisions once they see the same
  # members.
  #
  # Children: this node's DynamicSupervisor runs them through Drove.DynamicSupervisor.Starter,
  # which reports every (re)start here (after writing a new child's entry itself, or asking
  # this process to write it); this process monitors each child and, when one goes
  # down, decides from its restart type and exit reason whether the DynamicSupervisor restarts
  # it (nothing to do), it is gone for good (entry deleted), or it is being handed over
  # (entry relinquished). A child is taken over by the node the strategy picks among the
  # :alive members when its owner is gone or it was relinquished; the entry keeps its id.
  # Duplicates (a netsplit, or two nodes that briefly disagreed on the members) end when the
  # entry's single owner, after last-writer-wins, is another node: the copy here is stopped
  # without touching the entry.
  use GenServer
  @behaviour Drove.Owner
  import Bitwise
  require Logger

  defmodule State do
    @moduledoc false
    # The instance's state. Replicated facts live in the replica (and are mirrored in the
    # `children` and `owners` tables); everything here is this member's own view.

    @typedoc "A child's id: a random 128-bit integer, kept for its whole life."
    @type id :: non_neg_integer()
    @type member :: {atom(), node()}

    @type t :: %__MODULE__{
            name: atom(),
            me: member(),
            flags: map(),
            procsup: atom(),
            strategy: module(),
            seeded: boolean(),
            member_struct: module(),
            handle: reference(),
            repl: Drove.Replicator.t(),
            table: atom(),
            children: :ets.tid(),
            owners: :ets.tid(),
            auto: boolean(),
            members: %{member() => 1},
            infos: %{member() => {atom(), pid()}},
            dead: MapSet.t(pid()),
            watched: %{pid() => {nil, reference()}},
            members_info: %{member() => struct()},
            local: %{id() => {pid() | :starting | :restarting, map()}},
            by_pid: %{pid() => id()},
            stopping: %{id() => Drove.DynamicSupervisor.Lifecycle.stop()},
            superseded: %{id() => pid()},
            ready: boolean(),
            shutting_down: boolean(),
            quorum_waiters: [GenServer.from()],
            parent: pid() | nil,
            layout: list() | nil,
            confirm: %{
              ref: reference() | nil,
              covers: non_neg_integer(),
              seqs: :atomics.atomics_ref(),
              waiting: [{non_neg_integer(), GenServer.from()}]
            },
            awaiting: %{id() => [{GenServer.from(), node()}]},
            retries: %{id() => non_neg_integer()},
            asking: %{id() => pid()},
            handoff_out: %{id() => term()},
            handoff_in: %{id() => term()},
            handoff_wait: GenServer.from() | nil,
            answered: [{id(), pid(), map()}]
          }

    @enforce_keys [:name, :me, :flags, :procsup, :strategy, :handle, :repl, :table]
    defstruct [
      :name,
      :me,
      :flags,
      :procsup,
      :strategy,
      # strategies that draw random numbers are seeded per child, so all nodes agree
      :seeded,
      :member_struct,
      :handle,
      :repl,
      # the table callers read (config, own status, the member list)
      :table,
      # children: {id, owner, spec, pid}; owners: {owner, count} of the children rows naming
      # each owner (no zero rows), to find the owners that are gone without a walk
      :children,
      :owners,
      :auto,
      :parent,
      # the member list (Horde's shape) and what each member says of itself
      members: %{},
      infos: %{},
      # pids of member instances seen going down, and our monitors of live ones
      dead: MapSet.new(),
      watched: %{},
      members_info: %{},
      # local children: id => {pid | :starting | :restarting, spec}; pid => id; and how this
      # member is stopping some of them
      local: %{},
      by_pid: %{},
      stopping: %{},
      # id => pid of the copy this member evicted for another member's claim, while its own
      # claim with that pid may still be in the replica (see Lifecycle.on_entry/1)
      superseded: %{},
      ready: false,
      shutting_down: false,
      quorum_waiters: [],
      # the member view :active redistribution last acted on
      layout: nil,
      # starts placed here by a caller on this node, waiting until a peer has their entry
      # (see confirm/1); callers waiting for a child's entry from its node: id => [{from, node}]
      confirm: nil,
      awaiting: %{},
      # failed takeovers: id => attempts so far
      retries: %{},
      # state handoff (handoff: true children). asking: children here asked for their state,
      # id => the child's pid; handoff_out: states children here answered, carried by their
      # entry until it is handed over; handoff_in: states carried by entries as this member
      # last saw them, delivered to the instance that takes the child over here;
      # handoff_wait: the graceful stop waiting until every child asked has answered;
      # answered: children that answered since the last push, to stop once it has left
      asking: %{},
      handoff_out: %{},
      handoff_in: %{},
      handoff_wait: nil,
      answered: []
    ]
  end

  alias Drove.{Liveness, Native, Replicator}
  alias Drove.DynamicSupervisor.{Entry, Lifecycle, Starter, Tree}

  @call_timeout 5_000
  @confirm_timeout 5_000
  @start_confirm_timeout 1_000
  # the least time between two pushes of local writes (see Drove.Replicator :pause_us)
  @push_pause_us 1_000
  # a failed takeover is tried again after 50, 100, ... 3200 ms (6.3 s in all)
  @takeover_retries 7
  @start_attempts 4

  @known [
    :strategy,
    :members,
    :distribution_strategy,
    :max_restarts,
    :max_seconds,
    :max_children,
    :extra_arguments,
    :process_redistribution,
    :sync_interval,
    :max_message_bytes,
    :member_struct,
    :delta_crdt_options,
    :proxy_message_ttl,
    :shutdown,
    :name,
    :id,
    :horde_telemetry,
    :handoff_max_bytes
  ]

  # ------------------------------------------------------------------ flags

  @doc false
  @spec flags!(keyword() | map()) :: map()
  def flags!(%{__drove_flags__: true} = flags), do: flags
  def flags!(flags) when is_map(flags), do: flags |> Map.to_list() |> flags!()

  def flags!(opts) when is_list(opts) do
    Drove.Options.known!(opts, @known, "Drove.DynamicSupervisor")

    case Keyword.fetch(opts, :strategy) do
      {:ok, :one_for_one} ->
        :ok

      {:ok, other} ->
        raise ArgumentError,
              "Drove.DynamicSupervisor only supports strategy: :one_for_one, got: #{inspect(other)}"

      :error ->
        raise ArgumentError, "Drove.DynamicSupervisor needs the option strategy: :one_for_one"
    end

    members =
      case Keyword.get(opts, :members, []) do
        :auto ->
          :auto

        l when is_list(l) ->
          Drove.Cluster.normalize_members!(l)

        o ->
          raise ArgumentError, ":members must be :auto or a list of members, got: #{inspect(o)}"
      end

    strategy = Keyword.get(opts, :distribution_strategy, Drove.Distribution.Uniform)

    unless is_atom(strategy) and strategy != nil do
      raise ArgumentError,
            ":distribution_strategy must be a module implementing Drove.DistributionStrategy," <>
              " got: #{inspect(strategy)}"
    end

    member_struct = Keyword.get(opts, :member_struct, Drove.DynamicSupervisor.Member)

    unless is_atom(member_struct) do
      raise ArgumentError,
            ":member_struct must be a struct module, got: #{inspect(member_struct)}"
    end

    crdt_opts = Keyword.get(opts, :delta_crdt_options, [])

    crdt_opts = if Keyword.keyword?(crdt_opts), do: crdt_opts, else: []

    {sync_interval, max_message_bytes} =
      opts
      |> Keyword.put_new(:sync_interval, Keyword.get(crdt_opts, :sync_interval, 500))
      |> Drove.Options.replication!()

    %{
      __drove_flags__: true,
      strategy: :one_for_one,
      members: members,
      distribution_strategy: strategy,
      member_struct: member_struct,
      horde_telemetry: Keyword.get(opts, :horde_telemetry, false) == true,
      max_restarts: check_int!(opts, :max_restarts, 3, 0),
      max_seconds: check_int!(opts, :max_seconds, 5, 1),
      max_children: max_children!(Keyword.get(opts, :max_children, :infinity)),
      extra_arguments: list!(opts, :extra_arguments),
      process_redistribution: redistribution!(Keyword.get(opts, :process_redistribution)),
      sync_interval: sync_interval,
      max_message_bytes: max_message_bytes,
      handoff_max_bytes: handoff_max_bytes!(Keyword.get(opts, :handoff_max_bytes))
    }
  end

  defp check_int!(opts, key, default, min) do
    case Keyword.get(opts, key, default) do
      n when is_integer(n) and n >= min -> n
      o -> raise ArgumentError, "#{inspect(key)} must be an integer >= #{min}, got: #{inspect(o)}"
    end
  end

  defp max_children!(:infinity), do: :infinity
  defp max_children!(n) when is_integer(n) and n >= 0, do: n

  defp max_children!(o),
    do: raise(ArgumentError, ":max_children must be :infinity or >= 0, got: #{inspect(o)}")

  defp list!(opts, key) do
    case Keyword.get(opts, key, []) do
      l when is_list(l) -> l
      o -> raise ArgumentError, "#{inspect(key)} must be a list, got: #{inspect(o)}"
    end
  end

  # the size of a handed-over state travels in one replication message (at most 256 MiB)
  @handoff_max_bytes 4_194_304
  @handoff_max_bytes_limit 134_217_728

  defp handoff_max_bytes!(nil), do: @handoff_max_bytes

  defp handoff_max_bytes!(n) when is_integer(n) and n >= 1 and n <= @handoff_max_bytes_limit,
    do: n

  defp handoff_max_bytes!(o) do
    raise ArgumentError,
          ":handoff_max_bytes must be an integer in 1..#{@handoff_max_bytes_limit}, " <>
            "got: #{inspect(o)}"
  end

  defp redistribution!(nil), do: :passive
  defp redistribution!(r) when r in [:passive, :active], do: r

  defp redistribution!(o),
    do: raise(ArgumentError, ":process_redistribution is :passive or :active, got: #{inspect(o)}")

  # ------------------------------------------------------------------ caller side

  @doc false
  # The table callers read: config, own status and the member list.
  @spec table(atom()) :: atom()
  def table(sup) do
    # cached by the instance (building the atom costs more than the lookup itself)
    :persistent_term.get({__MODULE__, :table, sup}, nil) || :"drove_sup_#{sup}"
  end

  defp lookup!(sup, key) do
    case :ets.lookup(table(sup), key) do
      [{_, v}] -> v
      [] -> raise ArgumentError, "#{inspect(sup)} is not a running Drove.DynamicSupervisor"
    end
  rescue
    ArgumentError ->
      reraise ArgumentError,
              "#{inspect(sup)} is not a running Drove.DynamicSupervisor",
              __STACKTRACE__
  end

  @doc false
  @spec start_child(atom(), map()) :: DynamicSupervisor.on_start_child() | {:error, term()}
  def start_child(sup, spec) do
    config = lookup!(sup, :config)

    case lookup!(sup, :status) do
      :shutting_down ->
        {:error, {:shutting_down, "this node is shutting down."}}

      _ ->
        id = :rand.uniform(1 <<< 128) - 1
        place_and_start(sup, config, spec, id, [], @start_attempts)
    end
  end

  defp place_and_start(sup, config, spec, id, excluded, attempts) do
    members =
      for m <- lookup!(sup, :members) do
        if m.name in excluded, do: %{m | status: :dead}, else: m
      end

    case config.strategy.choose_node(spec, members) do
      {:ok, %{name: {member, node} = chosen}} ->
        # the chosen member may be another instance than `sup` (several members on a node)
        # a child started on this node is confirmed by a peer's acknowledgement, one shared
        # by the starts made meanwhile (see confirm/1); one started elsewhere answers with
        # its entry (durable/4)
        mode = if node == node(), do: :confirm, else: :entry

        ds_spec = %{
          id: id,
          start: {Starter, :start, [member, id, spec, config.extra_arguments, mode]},
          restart: Map.get(spec, :restart, :permanent),
          shutdown: Map.get(spec, :shutdown, default_shutdown(spec)),
          type: Map.get(spec, :type, :worker),
          modules: Map.get(spec, :modules, default_modules(spec))
        }

        try do
          {Tree.procsup(member), node}
          |> DynamicSupervisor.start_child(ds_spec)
          |> durable(sup, chosen, id)
        catch
          :exit, reason ->
            if attempts > 1 and node != node() do
              Logger.debug(
                "Drove.DynamicSupervisor #{inspect(sup)}: #{node} went away during " <>
                  "start_child (#{inspect(reason, limit: 5)}), placing again"
              )

              place_and_start(sup, config, spec, id, [chosen | excluded], attempts - 1)
            else
              {:error,
               {:node_dead_or_shutting_down,
                "the chosen node #{node} did not start the child: #{inspect(reason, limit: 5)}"}}
            end
        end

      {:error, _} = error ->
        error

      other ->
        {:error, {:bad_distribution_strategy_result, other}}
    end
  end

  # The child's node answered: {:ok, pid} goes back to the caller once another member holds
  # the child's entry, so that it outlives that node. The node's DynamicSupervisor is not held
  # meanwhile (Starter reports the start with a message).
  #   - A child placed here: a peer has acknowledged its entry (see confirm/1).
  #   - A new child placed on another node: its entry came with the answer, as the delta of
  #     its write there, and goes to this node's instance as that node's push would. The
  #     instance is not waited for: the delta is in its queue ahead of anything the caller
  #     sends it next, and it is joined even if the child's node is gone by then (place/2
  #     then finds the child orphaned). A crash of this node's instance before the join
  #     would lose it, as the same crash after the join would (the replica goes with it).
  #   - Otherwise (a start the child's node could not write itself): this node's instance
  #     waits for the entry's push.
  # A node that goes down before answering lost the child: placed again (the caller's catch),
  # under the same id.
  defp durable({:ok, pid, {:drove_seq, seq, info}}, _sup, {name, _node}, _id) do
    if acked(name) < seq, do: :ok = GenServer.call(name, {:confirm, seq}, :infinity)
    if info == :none, do: {:ok, pid}, else: {:ok, pid, elem(info, 1)}
  end

  defp durable({:ok, pid, {:drove_entry, from, delta, info}}, sup, _member, _id)
       when is_pid(from) and is_binary(delta) do
    send({sup, node()}, {:drove_delta, from, delta})
    if info == :none, do: {:ok, pid}, else: {:ok, pid, elem(info, 1)}
  end

  defp durable({:ok, _pid} = ok, sup, member, id), do: await_durable(ok, sup, member, id)
  defp durable({:ok, _pid, _info} = ok, sup, member, id), do: await_durable(ok, sup, member, id)
  defp durable(other, _sup, _member, _id), do: other

  # what a peer has acknowledged of the starts made on this node, without a hop through the
  # instance; 0 (ask it) when it is gone
  defp acked(name) do
    case :ets.lookup(table(name), :config) do
      [{_, %{seqs: seqs}}] -> :atomics.get(seqs, 1)
      _ -> 0
    end
  rescue
    ArgumentError -> 0
  end

  defp await_durable(ok, sup, {name, node}, id) do
    cond do
      # the instance could not tell the child's start apart (it was going down)
      node == node() -> await_instance(ok, name, {:confirm_entry, id}, node)
      # most often the push of the entry came in before the answer (same connection,
      # sent first): read this node's replica, without a hop through its instance
      has_entry?(sup, id) -> ok
      true -> await_instance(ok, sup, {:await_entry, id, node}, node)
    end
  end

  defp await_instance(ok, instance, request, node) do
    case GenServer.call(instance, request, :infinity) do
      :ok -> ok
      {:error, :nodedown} -> exit({:nodedown, node})
    end
  end

  defp has_entry?(sup, id) do
    case Drove.Handles.lookup(sup) do
      {_pid, handle} -> match?({:ok, _}, Native.get(handle, Entry.child_key(id)))
      nil -> false
    end
  end

  defp default_shutdown(spec),
    do: if(Map.get(spec, :type) == :supervisor, do: :infinity, else: 5000)

  defp default_modules(%{start: {m, _, _}}), do: [m]

  @doc false
  @spec terminate_child(atom(), pid()) :: :ok | {:error, :not_found}
  def terminate_child(sup, pid) do
    # the child runs under one of the members on its node: ask each until one has it
    names = for %{name: {name, n}} <- lookup!(sup, :members), n == node(pid), uniq: true, do: name

    Enum.reduce_while([sup | names] |> Enum.uniq(), {:error, :not_found}, fn name, acc ->
      case terminate_on(name, pid) do
        :ok -> {:halt, :ok}
        {:error, :not_found} -> {:cont, acc}
      end
    end)
  end

  defp terminate_on(name, pid) do
    case GenServer.call({name, node(pid)}, {:terminate_child, pid}, :infinity) do
      :ok -> :ok
      _ -> {:error, :not_found}
    end
  catch
    # that member (or the child's node) is gone, and the child with it
    :exit, _ -> {:error, :not_found}
  end

  @doc false
  @spec which_children(atom()) :: list()
  def which_children(sup) do
    sup |> fan_out(:which_children) |> Enum.flat_map(& &1)
  end

  @doc false
  @spec count_children(atom()) :: map()
  def count_children(sup) do
    zero = %{specs: 0, active: 0, supervisors: 0, workers: 0}

    sup
    |> fan_out(:count_children)
    |> Enum.reduce(zero, fn counts, acc ->
      Map.merge(acc, Map.take(counts, Map.keys(zero)), fn _, a, b -> a + b end)
    end)
  end

  # Calls the DynamicSupervisor of every reachable member at once; a member that does not
  # answer in time, or whose node is not connected, is skipped.
  # Every member, several on one node included, answers for the children it runs.
  defp fan_out(sup, fun) do
    members =
      for %{name: {name, n}, status: st} <- lookup!(sup, :members),
          st in [:alive, :shutting_down],
          Liveness.node_up?(n),
          do: {name, n}

    [{sup, node()} | members]
    |> Enum.uniq()
    |> Enum.group_by(fn {name, _} -> name end, fn {_, n} -> n end)
    |> Enum.flat_map(fn {name, nodes} ->
      nodes
      |> :erpc.multicall(DynamicSupervisor, fun, [Tree.procsup(name)], @call_timeout)
      |> Enum.flat_map(fn
        {:ok, result} -> [result]
        _ -> []
      end)
    end)
  end

  # ------------------------------------------------------------------ process

  @spec start_link(atom(), map()) :: GenServer.on_start()
  def start_link(name, flags) do
    GenServer.start_link(__MODULE__, {name, flags}, name: name)
  end

  @impl true
  def init({name, flags}) do
    me = {name, node()}
    :persistent_term.put({__MODULE__, :table, name}, :"drove_sup_#{name}")
    table = :ets.new(table(name), [:named_table, :protected, :set, read_concurrency: true])

    children = :ets.new(:children, [:set, :protected])
    owners = :ets.new(:owners, [:set, :protected])

    {handle, repl} =
      Drove.Owner.open(
        label: name,
        interval: flags.sync_interval,
        max_bytes: flags.max_message_bytes,
        want_diffs: true,
        # a start's caller does not wait for the push (see durable/4, confirm/1): the pushes
        # of a burst of starts, written by Starter, go together; the instance's own writes
        # (removals, claims, its status) go at once (put_child/5, delete_child/2)
        pause_us: @push_pause_us
      )

    Drove.Handles.register(name, self(), handle)
    :ok = :net_kernel.monitor_nodes(true, node_type: :visible)
    # starts for callers on this node: [acknowledged, written] (see confirm/1)
    seqs = :atomics.new(2, signed: false)

    s = %State{
      name: name,
      me: me,
      flags: flags,
      procsup: Tree.procsup(name),
      strategy: flags.distribution_strategy,
      seeded: not deterministic?(flags.distribution_strategy),
      member_struct: flags.member_struct,
      handle: handle,
      repl: repl,
      table: table,
      children: children,
      owners: owners,
      auto: flags.members == :auto,
      parent: Drove.Replicator.parent(),
      confirm: %{ref: nil, covers: 0, seqs: seqs, waiting: []}
    }

    :ets.insert(table, [
      {:config,
       %{
         strategy: s.strategy,
         extra_arguments: flags.extra_arguments,
         member_struct: s.member_struct,
         seqs: seqs
       }},
      {:status, :uninitialized}
    ])

    members =
      case flags.members do
        :auto -> for n <- [node() | Node.list()], do: {name, n}
        list -> list
      end

    s = s |> apply_members(members) |> refresh()
    {:ok, s}
  end

  @deterministic [
    Drove.Distribution.Uniform,
    Drove.Distribution.UniformQuorum,
    Drove.Distribution.Rendezvous
  ]

  defp deterministic?(strategy) when strategy in @deterministic, do: true

  defp deterministic?(strategy) do
    Code.ensure_loaded?(strategy) and function_exported?(strategy, :deterministic?, 0) and
      strategy.deterministic?() == true
  end

  # ------------------------------------------------------------------ calls

  @impl true
  def handle_call(:ready, _from, s) do
    s = %{s | ready: true}
    put_info(s, :alive)
    {:reply, :ok, s |> refresh() |> orphans_of_mine() |> rebalance()}
  end

  # the shutdown signal, before the node's DynamicSupervisor stops the children: handoff
  # children are asked for their state first (each within its shutdown time), and the stop
  # goes on once every one has answered or stopped answering
  def handle_call(:shutting_down, from, s) do
    s = %{s | shutting_down: true}
    put_info(s, :shutting_down)

    s =
      Enum.reduce(s.local, s, fn
        {id, {pid, spec}}, s when is_pid(pid) ->
          if Map.has_key?(s.stopping, id), do: s, else: move(s, id, pid, spec, :ask_only)

        _, s ->
          s
      end)

    {r, _} = Replicator.flush(s.repl)
    s = refresh(%{s | repl: r})

    if map_size(s.asking) == 0,
      do: {:reply, :ok, s},
      else: {:noreply, %{s | handoff_wait: from}}
  end

  def handle_call({:set_members, members}, _from, s) do
    members = Drove.Cluster.normalize_members!(members)
    {:reply, :ok, s |> apply_members(members) |> refresh() |> rebalance()}
  rescue
    # a raw call with a bad list (Drove.Cluster.set_members/3 checks it in the caller)
    e in ArgumentError -> {:reply, {:error, {:bad_members, Exception.message(e)}}, s}
  end

  def handle_call(:members, _from, s), do: {:reply, Map.keys(s.members) |> Enum.sort(), s}

  def handle_call({:terminate_child, pid}, from, s) do
    case Map.fetch(s.by_pid, pid) do
      {:ok, id} ->
        delete_child(s, id)
        stop_local(s.procsup, pid, from)
        {:noreply, %{s | stopping: Map.put(s.stopping, id, :terminate)}}

      :error ->
        {:reply, {:error, :not_found}, s}
    end
  end

  def handle_call(:wait_for_quorum, from, s) do
    if quorum?(s) do
      {:reply, :ok, s}
    else
      {:noreply, %{s | quorum_waiters: [from | s.quorum_waiters]}}
    end
  end

  # for tests and diagnostics: the replicated child entries as this node sees them
  def handle_call(:children, _from, s), do: {:reply, :ets.tab2list(s.children), s}

  # for tests and diagnostics: the state the entry of child `id` carries as this node saw it
  def handle_call({:carried, id}, _from, s), do: {:reply, Map.fetch(s.handoff_in, id), s}

  def handle_call(:info, _from, s) do
    info =
      s.handle
      |> Native.info()
      |> Map.merge(Replicator.info(s.repl))
      |> Map.merge(%{
        members: for({m, %{status: st}} <- Enum.sort(s.members_info), do: {m, st}),
        local_children: map_size(s.local),
        children: :ets.info(s.children, :size)
      })

    {:reply, info, s}
  end

  # a caller whose child was started here, as the `seq`th start of a caller on this node:
  # answered once a peer has acknowledged the writes up to it
  def handle_call({:confirm, seq}, from, %{confirm: c} = s) when is_integer(seq) do
    cond do
      :atomics.get(c.seqs, 1) >= seq -> {:reply, :ok, s}
      # from an earlier life of this instance: that child went down with it
      seq > :atomics.get(c.seqs, 2) -> {:reply, :ok, s}
      true -> {:noreply, %{s | confirm: %{c | waiting: [{seq, from} | c.waiting]}}}
    end
  end

  # the same, for a start the instance could not number: once a peer has the child's entry
  def handle_call({:confirm_entry, id}, from, s) do
    case :ets.lookup(s.children, id) do
      [{_, owner, _, _}] when owner == s.me ->
        %{confirm: c} = s
        seq = :atomics.add_get(c.seqs, 2, 1)
        s = %{s | confirm: %{c | waiting: [{seq, from} | c.waiting]}}
        {:noreply, confirm(s)}

      # taken by another member, or gone: nothing of ours to confirm
      _ ->
        {:reply, :ok, s}
    end
  end

  # Starter, in the node's DynamicSupervisor, on a start of a child it does not write itself
  # (see Starter): its entry is written and the child monitored before the
  # DynamicSupervisor goes on. A start for a caller on this node is numbered, and pushed and
  # pinged at once unless a ping is in flight (then the next ping takes it): the caller
  # waits for that number's acknowledgement.
  def handle_call({:drove_child_started, id, pid, spec, mode}, _from, s) do
    s = %{s | retries: Map.delete(s.retries, id)}
    {_, s} = child_started(s, id, pid, spec)

    if mode == :confirm do
      seq = :atomics.add_get(s.confirm.seqs, 2, 1)
      {:reply, {:seq, seq}, confirm(s)}
    else
      {:reply, :ok, s}
    end
  end

  # a caller whose child was started on `node`: answered once this replica has its entry
  def handle_call({:await_entry, id, node}, from, s) do
    cond do
      :ets.member(s.children, id) ->
        {:reply, :ok, s}

      not Liveness.node_up?(node) ->
        {:reply, {:error, :nodedown}, s}

      true ->
        # bounded as a confirmation is: the entry may have come and gone already (a child
        # that ended at once), and then nothing arrives
        Process.send_after(self(), {:drove_await_timeout, id, from}, @start_confirm_timeout)

        {:noreply,
         %{s | awaiting: Map.update(s.awaiting, id, [{from, node}], &[{from, node} | &1])}}
    end
  end

  def handle_call(other, from, s), do: Drove.Owner.handle_call(other, from, s)

  @impl true
  def handle_cast(msg, s), do: Drove.Owner.handle_cast(msg, s)

  # ------------------------------------------------------------------ info

  @impl true
  # the first pong of a ping acknowledges the starts it covers; the starts made meanwhile
  # share the next ping (one in flight at a time: a burst of starts costs a ping per round
  # trip, not per child)
  def handle_info({:drove_pong, ref, _from}, %{confirm: %{ref: ref} = c} = s) do
    {:noreply, confirm(acknowledged(s, c.covers))}
  end

  def handle_info({:drove_pong, _ref, _from}, s), do: {:noreply, s}

  def handle_info({:drove_confirm_timeout, ref}, s) do
    handle_info({:drove_pong, ref, nil}, s)
  end

  def handle_info({:drove_await_timeout, id, from}, s) do
    waiters = Map.get(s.awaiting, id, [])

    case Enum.split_with(waiters, &match?({^from, _}, &1)) do
      {[], _} ->
        {:noreply, s}

      {_, rest} ->
        GenServer.reply(from, :ok)

        awaiting =
          if rest == [], do: Map.delete(s.awaiting, id), else: Map.put(s.awaiting, id, rest)

        {:noreply, %{s | awaiting: awaiting}}
    end
  end

  # Starter wrote the entry of a new child itself (see Starter): monitor it, and push and
  # ping its entry at once when its caller runs here and waits for `seq`
  def handle_info({:drove_child_new, id, pid, spec, seq}, s) do
    Process.monitor(pid)
    s = %{s | local: Map.put(s.local, id, {pid, spec}), by_pid: Map.put(s.by_pid, pid, id)}
    mirror(s, id, s.me, spec, pid)
    {:noreply, if(seq, do: confirm(s), else: s)}
  end

  def handle_info({:drove_start_failed, id, result}, s) do
    attempt = Map.get(s.retries, id, 0)

    case Map.get(s.local, id) do
      {:starting, _spec} when result != :ignore and attempt < @takeover_retries ->
        # Often the child's previous incarnation still holds its registry name for a few
        # moments ({:already_started, pid}: its node is stopping and the removal has not
        # arrived yet): try again a little later, while the entry is still orphaned.
        Process.send_after(self(), {:drove_retry_takeover, id}, 50 <<< attempt)
        {:noreply, %{s | retries: Map.put(s.retries, id, attempt + 1)}}

      {:starting, _spec} ->
        Logger.warning(
          "Drove.DynamicSupervisor #{inspect(s.name)}: taking over a child failed: " <>
            inspect(result, limit: 8)
        )

        # a child that will not start here is dropped, as a failed start_child would be
        delete_child(s, id)
        {:noreply, %{s | local: Map.delete(s.local, id), retries: Map.delete(s.retries, id)}}

      _ ->
        {:noreply, %{s | retries: Map.delete(s.retries, id)}}
    end
  end

  # a child asked for its state answered (or did not, in time): the state goes in its entry,
  # pushed to the peers before the child is stopped (:drove_handoff_push, after the answers
  # already queued: one push for a burst of them); then it is stopped and handed over
  def handle_info({:drove_handoff_answer, id, pid, decision, state}, s) do
    s = %{s | asking: Map.delete(s.asking, id)}

    case {Map.get(s.local, id), Map.get(s.stopping, id)} do
      {{^pid, spec}, :redistribute} ->
        s = carry(s, id, pid, spec, decision, state)
        if s.answered == [], do: send(self(), :drove_handoff_push)
        {:noreply, %{s | answered: [{id, pid, spec} | s.answered]}}

      _ ->
        # it went down (and was handed over without state) or restarted meanwhile, or it is
        # being stopped for another reason (terminate_child, evicted as a duplicate)
        {:noreply, handoff_done(s)}
    end
  end

  def handle_info(:drove_handoff_push, s) do
    {repl, _} = Replicator.flush(s.repl)

    for {id, pid, spec} <- Enum.reverse(s.answered) do
      hook(:written, %{supervisor: s.name, id: id, spec: spec})
      stop_local(s.procsup, pid, nil)
    end

    {:noreply, handoff_done(%{s | repl: repl, answered: []})}
  end

  def handle_info({:drove_retry_takeover, id}, s) do
    with {:starting, spec} <- Map.get(s.local, id),
         [{_, owner, _, _}] <- :ets.lookup(s.children, id),
         true <- gone?(s, owner) and not s.shutting_down do
      {:noreply, start_takeover(s, id, spec)}
    else
      _ ->
        # taken by another member, removed, or this node is stopping: give it up here
        local =
          case Map.get(s.local, id) do
            {:starting, _} -> Map.delete(s.local, id)
            _ -> s.local
          end

        {:noreply, %{s | local: local, retries: Map.delete(s.retries, id)}}
    end
  end

  def handle_info({:DOWN, mref, :process, pid, reason}, s) do
    cond do
      Map.has_key?(s.by_pid, pid) ->
        {:noreply, child_down(s, pid, reason)}

      match?({_, ^mref}, Map.get(s.watched, pid)) ->
        s = %{s | watched: Map.delete(s.watched, pid), dead: MapSet.put(s.dead, pid)}
        {:noreply, s |> refresh() |> rebalance()}

      true ->
        forward(s, {:DOWN, mref, :process, pid, reason})
    end
  end

  def handle_info({:EXIT, pid, reason}, s) do
    if pid == s.parent, do: {:stop, reason, s}, else: {:noreply, s}
  end

  def handle_info({:nodedown, _node, _}, s) do
    {:noreply, s |> entries_lost() |> auto_members() |> refresh() |> rebalance()}
  end

  def handle_info({:nodeup, node, _}, s) do
    # Proof of life for the members on that node: their instances answer our hello.
    names = for {{name, ^node}, _} <- s.members, uniq: true, do: name

    Enum.each(
      [s.name | names],
      &:erlang.send({&1, node}, {:drove_sup_hello, self()}, [:noconnect])
    )

    {:noreply, s |> auto_members() |> refresh()}
  end

  def handle_info({:drove_sup_hello, pid}, s) when is_pid(pid) do
    if Liveness.node_up?(node(pid)) do
      if MapSet.member?(s.dead, pid) or not Map.has_key?(s.watched, pid) do
        :erlang.send(pid, {:drove_sup_hello_ack, self()}, [:noconnect])
      end

      {:noreply, s |> revive(pid) |> refresh() |> rebalance()}
    else
      {:noreply, s}
    end
  end

  def handle_info({:drove_sup_hello_ack, pid}, s) when is_pid(pid) do
    {:noreply, s |> revive(pid) |> refresh() |> rebalance()}
  end

  def handle_info(msg, s), do: forward(s, msg)

  defp forward(s, msg), do: Drove.Owner.handle_info(__MODULE__, msg, s)

  @impl Drove.Owner
  # a safety net for decisions that depended on messages that raced: cheap when nothing is
  # orphaned (one look at each owner's liveness, one scan per owner that is gone)
  def handle_tick(s), do: rebalance(s)

  @impl Drove.Owner
  def handle_diffs(diffs, s) do
    view = s.members_info
    s = Enum.reduce(diffs, s, &apply_diff/2)
    # only member diffs can change the member view
    s = if Enum.any?(diffs, &member_diff?/1), do: refresh(s), else: s

    # A changed member view can move any orphaned child: look at them all. Otherwise only
    # the children these diffs touched can need a new home (a full pass per message would
    # cost O(orphans) for each of the other survivors' claims).
    if s.members_info != view, do: rebalance(s), else: place(s, diffs)
  end

  @impl true
  def terminate(_reason, s) do
    if s.shutting_down do
      # the DynamicSupervisor has stopped every child by now: hand each one over
      Enum.each(s.local, fn {id, {_, spec}} -> relinquish(s, id, spec) end)
    end

    {repl, _} = Drove.Owner.close(s)
    Replicator.confirm(repl, @confirm_timeout)
    :ok
  end

  # ------------------------------------------------------------------ children

  defp child_started(s, id, pid, spec) do
    previous = Map.get(s.local, id)

    s =
      case previous do
        {old, _} when is_pid(old) and old != pid -> %{s | by_pid: Map.delete(s.by_pid, old)}
        _ -> s
      end

    Process.monitor(pid)
    s = %{s | local: Map.put(s.local, id, {pid, spec}), by_pid: Map.put(s.by_pid, pid, id)}

    takeover? = match?({:starting, _}, previous)

    start =
      case previous do
        {:starting, _} -> :takeover
        {:restarting, _} -> :restart
        _ -> :new
      end

    case :ets.lookup(s.children, id) do
      [{_, owner, _, _}] when owner != nil and owner != s.me ->
        if gone?(s, owner) do
          {:claimed, claim(s, id, spec, pid, start)}
        else
          # another live member owns this id (it took the child over first, or its owner
          # came back while this node started it): stop ours
          {:evicted, evict(s, id, pid)}
        end

      [] when takeover? ->
        # removed while this node was taking it over (it ended normally on its owner, or
        # was terminated): it must not come back
        {:evicted, evict(s, id, pid)}

      _ ->
        {:claimed, claim(s, id, spec, pid, start)}
    end
  end

  # Writes the entry of child `id` as this member's, running as `pid`. A takeover of an
  # entry that carries a handed-over state casts it to the new instance first: nothing else
  # can know where the child runs before the entry says so (nor the node's DynamicSupervisor,
  # whose start is waiting on Starter's call). The claim writes the entry without the state,
  # so a later restart, here or anywhere, starts without it.
  defp claim(s, id, spec, pid, start) do
    {state, handoff_in} = Map.pop(s.handoff_in, id)
    facts = %{start: start, carried: Map.has_key?(s.handoff_in, id), claimed: true}

    if Lifecycle.end_handoff(facts) == :deliver do
      hook(:delivering, %{supervisor: s.name, id: id, spec: spec})
      GenServer.cast(pid, {:drove, :end_handoff, state})
      Drove.Telemetry.end_handoff(s.name, id)
    end

    # no claim of ours that a newer one superseded is left in the replica
    s = %{s | handoff_in: handoff_in, superseded: Map.delete(s.superseded, id)}
    put_child(s, id, s.me, spec, pid)
    s
  end

  # Starts for callers on this node are numbered after their entries are written (the
  # second atomic of `seqs`, "written"; Starter numbers those it writes itself). The first,
  # "acknowledged", which the callers read, is the highest number a peer has joined, or
  # that waited a second for it, or any number while there is no peer: the entries up to it
  # outlive this node. At most one ping is in flight, sent after a push of everything
  # written so far and covering what was numbered before that push (read first: an entry
  # is written before it is numbered); when it is answered, the next one covers what was
  # numbered meanwhile.
  defp confirm(%{confirm: %{ref: nil} = c} = s) do
    written = :atomics.get(c.seqs, 2)

    if :atomics.get(c.seqs, 1) < written do
      {repl, _} = Replicator.flush(s.repl)
      s = %{s | repl: repl}

      case Replicator.ping(repl) do
        {_ref, 0} ->
          acknowledged(s, written)

        {ref, _n} ->
          Process.send_after(self(), {:drove_confirm_timeout, ref}, @start_confirm_timeout)
          %{s | confirm: %{c | ref: ref, covers: written}}
      end
    else
      s
    end
  end

  defp confirm(s), do: s

  defp acknowledged(%{confirm: c} = s, upto) do
    :atomics.put(c.seqs, 1, max(upto, :atomics.get(c.seqs, 1)))
    {done, waiting} = Enum.split_with(c.waiting, fn {seq, _} -> seq <= upto end)
    Enum.each(done, fn {_, from} -> GenServer.reply(from, :ok) end)
    %{s | confirm: %{c | ref: nil, waiting: waiting}}
  end

  # Callers waiting for the entry of child `id` from its node: it has arrived.
  defp entry_arrived(s, id) do
    case Map.pop(s.awaiting, id) do
      {nil, _} ->
        s

      {waiters, awaiting} ->
        Enum.each(waiters, fn {from, _node} -> GenServer.reply(from, :ok) end)
        %{s | awaiting: awaiting}
    end
  end

  # ... or its node went away first: the caller places the child again.
  defp entries_lost(%{awaiting: awaiting} = s) when map_size(awaiting) == 0, do: s

  defp entries_lost(s) do
    awaiting =
      Enum.flat_map(s.awaiting, fn {id, waiters} ->
        {lost, kept} = Enum.split_with(waiters, fn {_, node} -> not Liveness.node_up?(node) end)
        Enum.each(lost, fn {from, _} -> GenServer.reply(from, {:error, :nodedown}) end)
        if kept == [], do: [], else: [{id, kept}]
      end)

    %{s | awaiting: Map.new(awaiting)}
  end

  defp child_down(s, pid, reason) do
    {id, by_pid} = Map.pop(s.by_pid, pid)
    s = %{s | by_pid: by_pid}

    s
    |> child_down(id, pid, reason)
    |> Map.update!(:handoff_out, &Map.delete(&1, id))
  end

  defp child_down(s, id, pid, reason) do
    case Map.get(s.local, id) do
      {^pid, spec} ->
        {how, stopping} = Map.pop(s.stopping, id)
        s = %{s | stopping: stopping}

        facts = %{
          stop: how,
          shutting_down: s.shutting_down,
          restart: Map.get(spec, :restart, :permanent),
          reason: reason,
          mine: match?([{_, owner, _, _}] when owner == s.me, :ets.lookup(s.children, id))
        }

        case Lifecycle.on_exit(facts) do
          :forget ->
            %{s | local: Map.delete(s.local, id)}

          :relinquish ->
            relinquish(s, id, spec)
            %{s | local: Map.delete(s.local, id)}

          :restart_here ->
            # the DynamicSupervisor restarts it here; Starter reports the new pid
            %{s | local: Map.put(s.local, id, {:restarting, spec})}

          :delete ->
            delete_child(s, id)
            %{s | local: Map.delete(s.local, id)}
        end

      _ ->
        s
    end
  end

  defp evict(s, id, pid) do
    stop_local(s.procsup, pid, nil)
    %{s | stopping: Map.put(s.stopping, id, :evict), superseded: Map.put(s.superseded, id, pid)}
  end

  # DynamicSupervisor.terminate_child blocks for the child's shutdown time: not here.
  defp stop_local(procsup, pid, from) do
    spawn(fn ->
      result =
        try do
          DynamicSupervisor.terminate_child(procsup, pid)
        catch
          :exit, _ -> {:error, :not_found}
        end

      if from, do: GenServer.reply(from, result)
    end)
  end

  # ------------------------------------------------------------------ state handoff

  # Child `id` (running as `pid`) leaves this member. A handoff: true child is asked for its
  # state first, from a process of its own (bounded by the child's shutdown time), and stopped
  # once it answered (handle_info :drove_handoff_answer); any other is stopped now
  # (:ask_or_stop, a redistribution) or left to the node's DynamicSupervisor (:ask_only, a
  # graceful stop).
  defp move(s, id, pid, spec, how) do
    case Lifecycle.begin_handoff(spec) do
      {:ask, timeout} ->
        ask(s, id, pid, spec, timeout)

        %{
          s
          | asking: Map.put(s.asking, id, pid),
            stopping: Map.put(s.stopping, id, :redistribute)
        }

      :skip when how == :ask_or_stop ->
        stop_local(s.procsup, pid, nil)
        %{s | stopping: Map.put(s.stopping, id, :redistribute)}

      :skip ->
        s
    end
  end

  defp ask(s, id, pid, spec, timeout) do
    instance = self()
    name = s.name
    limit = s.flags.handoff_max_bytes

    spawn(fn ->
      t0 = System.monotonic_time()

      answer =
        try do
          GenServer.call(pid, {:drove, :begin_handoff}, timeout)
        catch
          :exit, {reason, {GenServer, :call, _}} -> {:error, reason}
          :exit, reason -> {:error, reason}
        end

      {size, state} =
        case answer do
          {:resume, state} -> {:erlang.external_size(state), state}
          _ -> {nil, nil}
        end

      decision = Lifecycle.on_answer(%{answer: answer, size: size, limit: limit})
      Drove.Telemetry.begin_handoff(name, id, decision, size, t0)
      # a refused state does not travel further than this process
      state = if decision == :carry, do: state
      hook(:answered, %{supervisor: name, id: id, spec: spec})
      send(instance, {:drove_handoff_answer, id, pid, decision, state})
    end)
  end

  # The answer of child `id`: a state to carry goes in its entry (as this member's, running),
  # pushed to the peers before the child is stopped, so that it survives the loss of this
  # node from then on.
  defp carry(s, id, pid, spec, :carry, state) do
    s = %{s | handoff_out: Map.put(s.handoff_out, id, state)}
    put_child(s, id, s.me, spec, pid)
    s
  end

  defp carry(s, _id, _pid, _spec, {:fresh, :restart}, _state), do: s

  defp carry(s, _id, _pid, spec, {:fresh, reason}, _state) do
    Logger.warning(
      "Drove.DynamicSupervisor #{inspect(s.name)}: the child #{inspect(Map.get(spec, :id))} " <>
        "moves without its state: " <> handoff_reason(reason)
    )

    s
  end

  defp handoff_reason({:too_big, size, limit}),
    do: "its state is #{size} bytes, over the handoff_max_bytes limit of #{limit}"

  defp handoff_reason({:no_answer, :timeout}),
    do: "it did not answer {:drove, :begin_handoff} within its shutdown time"

  defp handoff_reason({:no_answer, reason}),
    do: "{:drove, :begin_handoff} failed: #{inspect(reason, limit: 8)}"

  defp handoff_reason({:bad_answer, answer}),
    do:
      "it answered {:drove, :begin_handoff} with #{inspect(answer, limit: 8)}, " <>
        "not {:resume, state} or :restart"

  # The graceful stop goes on once every child asked has answered and the answers left.
  defp handoff_done(%{handoff_wait: nil} = s), do: s
  defp handoff_done(s) when map_size(s.asking) > 0 or s.answered != [], do: s

  defp handoff_done(s) do
    {repl, _} = Replicator.flush(s.repl)
    GenServer.reply(s.handoff_wait, :ok)
    %{s | repl: repl, handoff_wait: nil}
  end

  # Test-only: {Drove.DynamicSupervisor, :handoff_hook} in :persistent_term holds {m, f, a};
  # apply(m, f, [step, info | a]) runs at each step of a handoff (:answered in the asking
  # process, :written and :delivering in the instance), so that a test can stop there.
  defp hook(step, info) do
    case :persistent_term.get({Drove.DynamicSupervisor, :handoff_hook}, nil) do
      nil -> :ok
      {m, f, a} -> apply(m, f, [step, info | a])
    end
  end

  defp start_takeover(s, id, spec) do
    Drove.Telemetry.takeover(s.name, s.children, id)
    sup = s.name
    procsup = s.procsup
    extra = s.flags.extra_arguments

    ds_spec = %{
      id: id,
      start: {Starter, :start, [sup, id, spec, extra, :takeover]},
      restart: Map.get(spec, :restart, :permanent),
      shutdown: Map.get(spec, :shutdown, default_shutdown(spec)),
      type: Map.get(spec, :type, :worker),
      modules: Map.get(spec, :modules, default_modules(spec))
    }

    spawn(fn ->
      result =
        try do
          DynamicSupervisor.start_child(procsup, ds_spec)
        catch
          :exit, reason -> {:error, reason}
        end

      case result do
        {:ok, _} -> :ok
        {:ok, _, _} -> :ok
        other -> send(sup, {:drove_start_failed, id, other})
      end
    end)

    %{s | local: Map.put(s.local, id, {:starting, spec})}
  end

  # ------------------------------------------------------------------ replica

  # An entry keeps the state a child here answered (handoff_out) through every write until
  # it is handed over; a relinquished entry keeps the state it carried when this member saw
  # it (an earlier life of this member answered, then died).
  defp put_child(s, id, owner, spec, pid) do
    state =
      case carried(s, id, owner) do
        {:ok, _} = carried -> carried
        :error -> :none
      end

    :ok = Native.put(s.handle, Entry.child_key(id), Entry.child_value(owner, spec, pid, state))
    Replicator.push_soon()
    mirror(s, id, owner, spec, pid)
  end

  defp carried(s, id, owner) do
    case Map.fetch(s.handoff_out, id) do
      {:ok, _} = found -> found
      :error when owner == nil -> Map.fetch(s.handoff_in, id)
      :error -> :error
    end
  end

  defp relinquish(s, id, spec), do: put_child(s, id, nil, spec, nil)

  defp delete_child(s, id) do
    :ok = Native.delete(s.handle, Entry.child_key(id))
    Replicator.push_soon()
    unmirror(s, id)
  end

  # The owners table counts the rows of each owner: one counter update per new entry, none
  # when an entry changes only its pid or spec (the common case of a restart).
  defp mirror(s, id, owner, spec, pid) do
    case :ets.lookup(s.children, id) do
      [{_, ^owner, _, _}] ->
        :ok

      [{_, old, _, _}] ->
        uncount(s, old)
        count(s, owner)

      [] ->
        count(s, owner)
    end

    :ets.insert(s.children, {id, owner, spec, pid})
  end

  defp unmirror(s, id) do
    case :ets.lookup(s.children, id) do
      [{_, old, _, _}] ->
        uncount(s, old)
        :ets.delete(s.children, id)

      [] ->
        :ok
    end
  end

  defp count(s, owner), do: :ets.update_counter(s.owners, owner, 1, {owner, 0})

  defp uncount(s, owner) do
    if :ets.update_counter(s.owners, owner, -1) == 0, do: :ets.delete(s.owners, owner)
  end

  # the ids of the children an owner holds: a scan, done only when an owner is gone
  defp ids_of(s, owner) do
    :ets.select(s.children, [
      {{:"$1", :"$2", :_, :_}, [{:"=:=", :"$2", {:const, owner}}], [:"$1"]}
    ])
  end

  defp put_info(s, status) do
    :ok = Native.put(s.handle, Entry.info_key(s.me), Entry.info_value(status, self()))
    Replicator.push_soon()
  end

  # an entry that carries a handed-over state, and one that does not (any more)
  defp apply_diff({:add, {:child, id}, {owner, spec, pid, state}}, s),
    do: apply_entry(%{s | handoff_in: Map.put(s.handoff_in, id, state)}, id, owner, spec, pid)

  defp apply_diff({:add, {:child, id}, {owner, spec, pid}}, s),
    do: apply_entry(%{s | handoff_in: Map.delete(s.handoff_in, id)}, id, owner, spec, pid)

  defp apply_diff({:remove, {:child, id}}, s) do
    s = %{s | handoff_in: Map.delete(s.handoff_in, id)}

    case Lifecycle.on_entry(entry_facts(s, id, :remove, nil, nil)) do
      :restate ->
        {running, spec} = Map.fetch!(s.local, id)
        put_child(s, id, s.me, spec, running)

      :keep ->
        unmirror(s, id)
    end

    # no claim of ours is left behind in the replica: the entry went, or we wrote it anew
    %{s | superseded: Map.delete(s.superseded, id)}
  end

  defp apply_diff({:add, {:member, m}, _}, s),
    do: sync_neighbours(%{s | members: Map.put(s.members, m, 1)})

  defp apply_diff({:remove, {:member, m}}, s),
    do: sync_neighbours(%{s | members: Map.delete(s.members, m)})

  defp apply_diff({:add, {:member_info, m}, {status, pid}}, s) when is_pid(pid) do
    s =
      case Map.get(s.infos, m) do
        {_, ^pid} -> s
        {_, old} -> unwatch(s, old)
        nil -> s
      end

    s = %{s | infos: Map.put(s.infos, m, {status, pid})}

    if m == s.me and pid != self() and s.ready do
      # an earlier life of this instance: say who we are now
      put_info(s, if(s.shutting_down, do: :shutting_down, else: :alive))
      %{s | infos: Map.put(s.infos, m, {current_status(s), self()})}
    else
      watch(s, pid)
    end
  end

  defp apply_diff({:remove, {:member_info, m}}, s), do: %{s | infos: Map.delete(s.infos, m)}

  defp apply_diff(other, s) do
    %{s | repl: Replicator.bad_message(s.repl, {:unexpected_entry, other})}
  end

  defp apply_entry(s, id, owner, spec, pid) do
    mirror(s, id, owner, spec, pid)
    s = entry_arrived(s, id)

    case Lifecycle.on_entry(entry_facts(s, id, :add, owner, pid)) do
      :keep ->
        s

      :restate ->
        {running, lspec} = Map.fetch!(s.local, id)
        put_child(s, id, s.me, lspec, running)
        %{s | superseded: Map.delete(s.superseded, id)}

      :evict ->
        {running, _} = Map.fetch!(s.local, id)
        evict(s, id, running)

      :relinquish ->
        relinquish(s, id, spec)
        s

      :delete ->
        delete_child(s, id)
        %{s | superseded: Map.delete(s.superseded, id)}
    end
  end

  defp entry_facts(s, id, change, owner, pid) do
    running =
      case Map.get(s.local, id) do
        {p, _} when is_pid(p) -> p
        _ -> nil
      end

    %{
      change: change,
      running: running,
      known: Map.has_key?(s.local, id),
      stopping: Map.get(s.stopping, id),
      owner: owner,
      pid: pid,
      mine: owner == s.me,
      ready: s.ready,
      superseded: pid != nil and Map.get(s.superseded, id) == pid
    }
  end

  # ------------------------------------------------------------------ liveness

  defp watch(s, pid) when pid == self(), do: s

  defp watch(s, pid) do
    cond do
      Map.has_key?(s.watched, pid) or MapSet.member?(s.dead, pid) -> s
      not Liveness.node_up?(node(pid)) -> s
      true -> %{s | watched: Map.put(s.watched, pid, {nil, Process.monitor(pid)})}
    end
  end

  defp unwatch(s, pid) do
    case Map.pop(s.watched, pid) do
      {{_, mref}, watched} ->
        Process.demonitor(mref, [:flush])
        %{s | watched: watched}

      {nil, _} ->
        s
    end
  end

  defp revive(s, pid) do
    s = %{s | dead: MapSet.delete(s.dead, pid)}

    if Enum.any?(s.infos, fn {_, {_, p}} -> p == pid end) do
      watch(s, pid)
    else
      s
    end
  end

  defp current_status(s) do
    cond do
      s.shutting_down -> :shutting_down
      s.ready -> :alive
      true -> :uninitialized
    end
  end

  defp status(s, m) when m == s.me, do: current_status(s)

  defp status(s, m) do
    case Map.get(s.infos, m) do
      nil ->
        :uninitialized

      {st, pid} ->
        cond do
          MapSet.member?(s.dead, pid) -> :dead
          not Liveness.node_up?(node(pid)) -> :dead
          true -> st
        end
    end
  end

  # A child's owner is gone when its instance is not running anywhere this node can see.
  defp gone?(_s, nil), do: true
  defp gone?(s, owner) when owner == s.me, do: false

  defp gone?(s, {_, node} = owner) do
    case Map.get(s.infos, owner) do
      nil -> not Liveness.node_up?(node)
      {_, pid} -> MapSet.member?(s.dead, pid) or not Liveness.node_up?(node(pid))
    end
  end

  # ------------------------------------------------------------------ placement

  # Recomputes the member view and publishes it to callers.
  defp refresh(s) do
    info =
      Map.new(Map.keys(s.members), fn m ->
        {m, struct(s.member_struct, name: m, status: status(s, m))}
      end)

    :ets.insert(s.table, [
      {:members, info |> Map.values() |> Enum.sort_by(& &1.name)},
      {:status, current_status(s)}
    ])

    s = %{s | members_info: info}

    if s.quorum_waiters != [] and quorum?(s) do
      Enum.each(s.quorum_waiters, &GenServer.reply(&1, :ok))
      %{s | quorum_waiters: []}
    else
      s
    end
  end

  defp quorum?(s) do
    s.strategy.has_quorum?(s.members_info |> Map.values() |> Enum.sort_by(& &1.name))
  end

  # Children whose owner is gone (or that were relinquished) go to the member the strategy
  # picks; this node starts those it is picked for. Under :active, children running here
  # that now belong elsewhere are handed over.
  defp rebalance(%{ready: false} = s), do: s
  defp rebalance(%{shutting_down: true} = s), do: s

  defp rebalance(s) do
    members = s.members_info |> Map.values() |> Enum.sort_by(& &1.name)

    s =
      s
      |> owners_gone()
      |> Enum.reduce(s, fn owner, s -> take_over(s, owner, members) end)

    if s.flags.process_redistribution == :active and s.layout != members do
      redistribute(%{s | layout: members}, members)
    else
      s
    end
  end

  defp member_diff?({:add, {kind, _}, _}), do: kind in [:member, :member_info]
  defp member_diff?({:remove, {kind, _}}), do: kind in [:member, :member_info]
  defp member_diff?(_), do: false

  defp place(%{ready: false} = s, _diffs), do: s
  defp place(%{shutting_down: true} = s, _diffs), do: s

  defp place(s, diffs) do
    members = s.members_info |> Map.values() |> Enum.sort_by(& &1.name)

    # whether an owner is gone is asked once per message (it looks at the node's socket),
    # not once per child: a push carries many children of one owner
    {s, _} =
      Enum.reduce(diffs, {s, %{}}, fn
        {:add, {:child, id}, value}, {s, seen} ->
          {owner, spec} = {elem(value, 0), elem(value, 1)}

          {gone, seen} =
            case seen do
              %{^owner => gone} -> {gone, seen}
              _ -> gone_once(s, owner, seen)
            end

          with false <- Map.has_key?(s.local, id),
               true <- gone,
               {:ok, %{name: chosen}} when chosen == s.me <- choose(s, id, spec, members) do
            {start_takeover(s, id, spec), seen}
          else
            _ -> {s, seen}
          end

        _, acc ->
          acc
      end)

    s
  end

  defp gone_once(s, owner, seen) do
    gone = gone?(s, owner)
    {gone, Map.put(seen, owner, gone)}
  end

  defp owners_gone(s) do
    for {owner, _} <- :ets.tab2list(s.owners), gone?(s, owner), do: owner
  end

  defp take_over(s, owner, members) do
    ids = ids_of(s, owner)

    Enum.reduce(ids, s, fn id, s ->
      with false <- Map.has_key?(s.local, id),
           [{_, ^owner, spec, _}] <- :ets.lookup(s.children, id),
           {:ok, %{name: chosen}} <- choose(s, id, spec, members) do
        if chosen == s.me, do: start_takeover(s, id, spec), else: s
      else
        _ -> s
      end
    end)
  end

  defp redistribute(s, members) do
    Enum.reduce(s.local, s, fn
      {id, {pid, spec}}, s when is_pid(pid) ->
        case {Map.has_key?(s.stopping, id), choose(s, id, spec, members)} do
          {false, {:ok, %{name: chosen}}} when chosen != s.me ->
            move(s, id, pid, spec, :ask_or_stop)

          _ ->
            s
        end

      _, s ->
        s
    end)
  end

  # Deterministic on every node for the same members, including for strategies that draw
  # random numbers: the draw is seeded by the child id.
  defp choose(%{seeded: false} = s, _id, spec, members), do: s.strategy.choose_node(spec, members)

  defp choose(s, id, spec, members) do
    old = :rand.export_seed()
    <<a::32, b::32, c::32>> = <<:erlang.phash2(id)::32, :erlang.phash2({id, 1})::32, 1::32>>
    :rand.seed(:exsss, {a, b, c})

    try do
      s.strategy.choose_node(spec, members)
    after
      if old == :undefined, do: Process.delete(:rand_seed), else: :rand.seed(old)
    end
  end

  # Entries this node owns but does not run: an earlier life of this instance wrote them.
  defp orphans_of_mine(s) do
    ids = ids_of(s, s.me)

    for id <- ids,
        not Map.has_key?(s.local, id),
        [{_, _, spec, _}] <- [:ets.lookup(s.children, id)] do
      relinquish(s, id, spec)
    end

    s
  end

  # ------------------------------------------------------------------ members

  defp auto_members(%{auto: true} = s) do
    apply_members(s, for(n <- [node() | Node.list()], do: {s.name, n}))
  end

  defp auto_members(s), do: s

  # Adds and removes {:member, m} keys; never touches children or infos.
  defp apply_members(s, members) do
    wanted = [s.me | members]
    changed = Drove.Cluster.write_members(s.handle, Map.keys(s.members), wanted)
    Drove.Telemetry.members(s.name, wanted, changed)
    sync_neighbours(%{s | members: Map.new(wanted, &{&1, 1})})
  end

  defp sync_neighbours(s) do
    neighbours = for {m, _} <- s.members, m != s.me, do: m
    %{s | repl: Replicator.set_neighbours(s.repl, neighbours, s.name)}
  end
end
