defmodule Drove.Telemetry do
  @moduledoc """
  Drove's `:telemetry` events, sent when the `:telemetry` module is loaded.

  Drove does not depend on `:telemetry`: when your application has it (almost every Phoenix
  application does), Drove's events go to it and `:telemetry.attach/4` handlers receive them;
  without it they cost a `:persistent_term` read each. Whether `:telemetry` is there is
  checked once, at the first event; call `detect/0` after loading it later.

  Every event, with its measurements and metadata, is listed in `docs/telemetry.md`. Durations
  are in native time units (`System.convert_time_unit/3`), sizes in bytes.
  """

  @key {__MODULE__, :module}

  @typedoc "A telemetry event name."
  @type event :: [atom(), ...]

  @doc """
  The module events go to: `:telemetry` when it is loaded, else `nil`. Checked at the first
  call and remembered (`detect/0` checks again).
  """
  @spec handler() :: module() | nil
  def handler do
    case :persistent_term.get(@key, :unknown) do
      :unknown -> detect()
      module -> module
    end
  end

  @doc """
  Checks whether `:telemetry` (with `execute/3`) is loaded or loadable, remembers the answer
  and returns the module or `nil`.
  """
  @spec detect() :: module() | nil
  def detect do
    module =
      if Code.ensure_loaded?(:telemetry) and function_exported?(:telemetry, :execute, 3),
        do: :telemetry

    # a put of an equal value would still cost a scan of every process's heap: only changes
    if :persistent_term.get(@key, :unknown) !== module, do: :persistent_term.put(@key, module)
    module
  end

  @doc "Sends an event when `:telemetry` is there; `:ok`."
  @spec execute(event(), map(), map()) :: :ok
  def execute(event, measurements, metadata) do
    case handler() do
      nil -> :ok
      module -> send_event(module, event, measurements, metadata)
    end
  end

  @doc """
  Runs `fun` and, when `:telemetry` is there, sends `event` with `%{duration: native}` and
  `metadata` plus `result: fun's result`. Returns fun's result.
  """
  @spec timed(event(), map(), (() -> result)) :: result when result: term()
  def timed(event, metadata, fun) do
    case handler() do
      nil ->
        fun.()

      module ->
        t0 = System.monotonic_time()
        result = fun.()
        duration = System.monotonic_time() - t0
        send_event(module, event, %{duration: duration}, Map.put(metadata, :result, result))
        result
    end
  end

  # ------------------------------------------------------------------ Drove's events
  # One function per event, called in one line from where it happens: the measurements are
  # computed only when :telemetry is there. Those with a duration take now/0's value from
  # before the work.

  @doc false
  # A monotonic timestamp to pass to the events that report a duration, or nil without
  # :telemetry: the event function given nil returns at once, so an event costs one check
  # (and no clock read, which costs more than the check on some virtual machines; see
  # bench/telemetry.exs).
  @spec now() :: integer() | nil
  def now do
    case handler() do
      nil -> nil
      _ -> System.monotonic_time()
    end
  end

  @doc false
  @spec push(term(), [binary()], non_neg_integer(), integer() | nil) :: :ok
  def push(_replica, _chunks, _targets, nil), do: :ok
  def push(_replica, [], _targets, _t0), do: :ok

  def push(replica, chunks, targets, t0) do
    with_handler(fn module ->
      send_event(
        module,
        [:drove, :replication, :push],
        %{chunks: length(chunks), bytes: bytes(chunks), targets: targets, duration: since(t0)},
        %{replica: replica}
      )
    end)
  end

  @doc false
  @spec join(term(), pid(), binary(), non_neg_integer(), integer() | nil) :: :ok
  def join(_replica, _from, _bin, _elements, nil), do: :ok

  def join(replica, from, bin, elements, t0) do
    with_handler(fn module ->
      send_event(
        module,
        [:drove, :replication, :join],
        %{bytes: byte_size(bin), elements: elements, duration: since(t0)},
        %{replica: replica, from: from}
      )
    end)
  end

  @doc false
  @spec bad_message(term(), term()) :: :ok
  def bad_message(replica, reason) do
    execute([:drove, :replication, :bad_message], %{count: 1}, %{replica: replica, reason: reason})
  end

  @doc false
  @spec rounds_started(term(), non_neg_integer()) :: :ok
  def rounds_started(_replica, 0), do: :ok

  def rounds_started(replica, n),
    do: execute([:drove, :anti_entropy, :start], %{rounds: n}, %{replica: replica})

  @doc false
  @spec round_reply(term(), pid(), [binary()], integer() | nil) :: :ok
  def round_reply(_replica, _peer, _chunks, nil), do: :ok

  def round_reply(replica, peer, chunks, t0) do
    with_handler(fn module ->
      send_event(
        module,
        [:drove, :anti_entropy, :reply],
        %{chunks: length(chunks), bytes: bytes(chunks), duration: since(t0)},
        %{replica: replica, peer: peer}
      )
    end)
  end

  @doc false
  @spec round_finish(term(), pid(), [binary()], list(), non_neg_integer(), integer() | nil) ::
          :ok
  def round_finish(_replica, _peer, _chunks, _diffs, _removed, nil), do: :ok

  def round_finish(replica, peer, chunks, diffs, removed, t0) do
    with_handler(fn module ->
      send_event(
        module,
        [:drove, :anti_entropy, :finish],
        %{
          chunks: length(chunks),
          bytes: bytes(chunks),
          diffs: length(diffs),
          removed: removed,
          duration: since(t0)
        },
        %{replica: replica, peer: peer}
      )
    end)
  end

  @doc false
  @spec conflict(atom(), term(), pid(), pid()) :: :ok
  def conflict(registry, key, loser, winner) do
    execute([:drove, :registry, :conflict], %{count: 1}, %{
      registry: registry,
      key: key,
      loser: loser,
      winner: winner
    })
  end

  @doc false
  # A child this node starts because its owner is gone (failover) or handed it over
  # (owner nil: a redistribution or a graceful stop), from the supervisor's children table.
  @spec takeover(atom(), :ets.tid() | atom(), term()) :: :ok
  def takeover(supervisor, children, id) do
    with_handler(fn module ->
      case :ets.lookup(children, id) do
        [{_, nil, _, _}] ->
          send_event(module, [:drove, :supervisor, :handoff], %{count: 1}, %{
            supervisor: supervisor,
            id: id
          })

        [{_, owner, _, _}] ->
          send_event(module, [:drove, :supervisor, :failover], %{count: 1}, %{
            supervisor: supervisor,
            id: id,
            from: owner
          })

        [] ->
          :ok
      end
    end)
  end

  @doc false
  # A handoff: true child about to move answered {:drove, :begin_handoff} (or did not), on
  # its old node, in the process that asked it. `t0` is System.monotonic_time() before the
  # call.
  @spec begin_handoff(atom(), term(), term(), non_neg_integer() | nil, integer()) :: :ok
  def begin_handoff(supervisor, id, decision, size, t0) do
    with_handler(fn module ->
      result = if decision == :carry, do: :resume, else: elem(decision, 1)

      send_event(
        module,
        [:drove, :supervisor, :begin_handoff],
        %{duration: since(t0), bytes: size || 0},
        %{supervisor: supervisor, id: id, result: result}
      )
    end)
  end

  @doc false
  # A handed-over state was cast to the new instance of child `id`, on its new node.
  @spec end_handoff(atom(), term()) :: :ok
  def end_handoff(supervisor, id) do
    execute([:drove, :supervisor, :end_handoff], %{count: 1}, %{supervisor: supervisor, id: id})
  end

  @doc false
  # An instance's member list changed (Drove.Cluster.write_members/3's answer).
  @spec members(atom(), list(), {list(), list()}) :: :ok
  def members(_instance, _wanted, {[], []}), do: :ok

  def members(instance, wanted, {added, removed}) do
    with_handler(fn module ->
      send_event(
        module,
        [:drove, :cluster, :members],
        %{members: length(Enum.uniq(wanted)), added: length(added), removed: length(removed)},
        %{instance: instance, added: added, removed: removed}
      )
    end)
  end

  @doc false
  # Drove.Membership applies a new node set; added and removed are node names as strings
  # (Drove.Native.members_diff/2's answer).
  @spec membership([atom()], atom(), [node()], [binary()], [binary()]) :: :ok
  def membership(instances, mode, nodes, added, removed) do
    with_handler(fn module ->
      send_event(
        module,
        [:drove, :membership, :change],
        %{nodes: length(nodes), added: length(added), removed: length(removed)},
        %{
          instances: instances,
          mode: mode,
          nodes: nodes,
          added: Enum.map(added, &String.to_existing_atom/1),
          removed: Enum.map(removed, &String.to_existing_atom/1)
        }
      )
    end)
  end

  defp with_handler(fun) do
    case handler() do
      nil -> :ok
      module -> fun.(module)
    end
  end

  defp send_event(module, event, measurements, metadata) do
    module.execute(event, measurements, metadata)
    :ok
  end

  defp since(t0), do: System.monotonic_time() - t0

  defp bytes(chunks), do: Enum.reduce(chunks, 0, &(byte_size(&1) + &2))
end
