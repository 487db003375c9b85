defmodule Drove.Replicator do
  @moduledoc false
  # The replication protocol of one replica, as a plain data structure driven by its owner
  # process (Drove.CRDT, Drove.Registry.Server, ...). The owner forwards every message to
  # handle_info/2 and gets back the read changes to act on.
  #
  # Protocol (all messages carry the sender's pid; binaries are decoded and checked in C):
  #   {:drove_delta, from, delta}                  eager push of local writes, and sync chunks
  #   {:drove_sync_sum, from, ref, summary}        start of an anti-entropy round: 20 bytes,
  #                                                hashes of the context and of the digests
  #   {:drove_sync_same, from, ref}                the responder's summary is the same: done
  #   {:drove_sync_diff, from, ref}                it differs: the initiator goes on with
  #   {:drove_sync_req, from, ref, ctx, digest}    the full request (8 KiB of bucket digests)
  #   {:drove_sync_reply, from, ref, ctx, manifest} reply, sent after the chunks the
  #                                                initiator has not seen
  #   {:drove_bye, from}                           the sender drops us as a neighbour
  # After a reply the initiator sends the chunks the responder has not seen and the removals
  # the responder's manifest shows it has not made. At most one round is in flight per
  # neighbour; a round that gets no reply expires after max(10 intervals, 5 s).
  #
  # Idle cost: a round between replicas that hold the same thing is two small messages, and
  # each tick starts rounds with at most `fanout` neighbours, taken in turn (all of them in a
  # small cluster): a cluster's idle traffic grows with its size, not with its size squared.
  # A new neighbour gets a full request at once; so does a neighbour whose last summary round
  # expired unanswered (a node of an older version ignores summaries), until it answers one.
  require Logger

  alias Drove.Native

  @max_manifest_dots 65_536
  @tags [
    :drove_delta,
    :drove_sync_sum,
    :drove_sync_same,
    :drove_sync_diff,
    :drove_sync_req,
    :drove_sync_reply,
    :drove_bye,
    :drove_ping
  ]
  # process dictionary key of the counter of sends dropped on a busy distribution port
  @dropped {__MODULE__, :sends_dropped}
  # process dictionary key: a :drove_flush_now is on its way (push_soon/0)
  @push_soon {__MODULE__, :push_soon}
  # DV_MAX_MESSAGE in c_src/codec.h: the largest binary the decoders accept
  @max_message 268_435_456

  defmodule Neighbour do
    @moduledoc false
    # round: nil or {ref, deadline, :sum | :full}; sum: false after a summary went unanswered
    defstruct dest: nil, mref: nil, pid: nil, up: false, round: nil, sum: true
  end

  defstruct handle: nil,
            label: nil,
            interval: 500,
            max_bytes: 1_048_576,
            want_diffs: false,
            neighbours: %{},
            passive: %{},
            flusher: nil,
            targets_sent: [],
            logging: true,
            fanout: nil,
            cursor: 0,
            dropped: nil,
            pause_us: nil,
            last_push: nil,
            armed: nil,
            stats: %{
              bad_messages: 0,
              deltas_in: 0,
              deltas_out: 0,
              rounds: 0,
              rounds_done: 0,
              rounds_same: 0
            }

  @type diff :: {:add, term(), term()} | {:remove, term()}
  @type t :: %__MODULE__{}

  @spec new(reference(), keyword()) :: t()
  def new(handle, opts) do
    r = %__MODULE__{
      handle: handle,
      label: Keyword.get(opts, :label, self()),
      interval: Keyword.fetch!(opts, :interval),
      max_bytes: Keyword.fetch!(opts, :max_bytes),
      want_diffs: Keyword.get(opts, :want_diffs, false),
      fanout: Keyword.get(opts, :fanout),
      dropped: :counters.new(1, [:write_concurrency]),
      pause_us: Keyword.get(opts, :pause_us),
      # as if the last push were a pause ago: the first write goes at once
      last_push: System.monotonic_time(:microsecond) - (Keyword.get(opts, :pause_us) || 0)
    }

    Process.put(@dropped, r.dropped)

    # With a flusher, local writes are pushed by a process of their own, so they do not
    # wait behind the owner's mailbox (a registry's owner handles a message per
    # registration). Its local diffs are dropped: use it only when the owner needs none.
    if Keyword.get(opts, :flusher, false) do
      pid = __MODULE__.Flusher.start_link(handle, self(), r.max_bytes, r.dropped, r.label)
      :ok = Native.set_owner(handle, pid)
      %{r | flusher: pid}
    else
      r
    end
  end

  @doc "Normalises a neighbour designation; raises ArgumentError on anything else."
  @spec normalize_dest(term()) :: pid() | atom() | {atom(), node()}
  def normalize_dest({name, node}) when is_atom(name) and node == node(), do: name
  def normalize_dest(dest) when is_pid(dest) or is_atom(dest), do: dest
  def normalize_dest({name, node} = d) when is_atom(name) and is_atom(node), do: d

  def normalize_dest(other) do
    raise ArgumentError,
          "a neighbour is a pid, a local name or {name, node}, got: #{inspect(other)}"
  end

  @spec set_neighbours(t(), list(), atom() | nil) :: t()
  def set_neighbours(r, list, own_name) do
    wanted =
      list
      |> Enum.map(&normalize_dest/1)
      |> Enum.reject(&(&1 == self() or (own_name != nil and &1 == own_name)))
      |> Enum.uniq()

    {keep, drop} = Map.split(r.neighbours, wanted)

    Enum.each(drop, fn {_, n} ->
      if n.mref, do: Process.demonitor(n.mref, [:flush])
      send_to(n.pid || n.dest, {:drove_bye, self()})
    end)

    added =
      for d <- wanted, not Map.has_key?(keep, d), into: %{}, do: {d, monitor(%Neighbour{dest: d})}

    r = %{r | neighbours: Map.merge(keep, added)}
    r = if map_size(added) > 0, do: start_rounds(r, Map.keys(added), :full), else: r
    sync_targets(r)
  end

  @doc "Periodic work: re-monitor neighbours that were down, start due rounds."
  @spec tick(t()) :: t()
  def tick(r), do: r |> remonitor() |> expire_rounds() |> start_due_rounds() |> sync_targets()

  @doc "Starts a round with every neighbour that is up, in flight or not."
  @spec sync_now(t()) :: t()
  def sync_now(r) do
    up = for {d, %Neighbour{up: true}} <- r.neighbours, do: d
    start_rounds(r, up, :sum)
  end

  @doc """
  How many neighbours a tick starts rounds with, out of `n`: all of them up to 4, then
  about 2 log2(n) (4 of 15, 6 of 31, 8 of 63). Each pair is also synced from the other
  side, so with n neighbours a given pair meets about every n / fanout / 2 ticks.
  """
  @spec fanout(non_neg_integer()) :: non_neg_integer()
  def fanout(n) when n <= 4, do: n
  def fanout(n), do: min(n, max(4, 2 * ceil(:math.log2(n + 1)) - 4))

  @doc """
  Handles a protocol message. Returns `{:ok, r, diffs}` (diffs of joins, or of local writes
  on a flush) or `:unknown` for messages that are not the protocol's.
  """
  @spec handle_info(term(), t()) :: {:ok, t(), [diff()]} | :unknown
  def handle_info(msg, r) do
    case do_handle_info(msg, r) do
      {:ok, r, diffs} -> {:ok, sync_targets(r), diffs}
      :unknown -> :unknown
    end
  end

  # With :pause_us, the pushes of local writes are at least that far apart: a lone write is
  # pushed at once, the writes that follow it within the pause go together at its end (a
  # burst costs the peers one wake-up per pause, not one per write). The owner's own calls
  # of flush/1 are not held back. `armed`: the timer of the pending :drove_flush_due; when it
  # fires it flushes, or, when a flush of the owner's came since, waits again.
  defp do_handle_info(:drove_flush, %{pause_us: nil} = r) do
    {r, diffs} = flush(r)
    {:ok, r, diffs}
  end

  defp do_handle_info(:drove_flush, r) do
    wait = r.last_push + r.pause_us - System.monotonic_time(:microsecond)

    cond do
      wait <= 0 ->
        {r, diffs} = flush(r)
        {:ok, r, diffs}

      r.armed != nil ->
        {:ok, r, []}

      true ->
        timer = Process.send_after(self(), :drove_flush_due, div(wait + 999, 1000))
        {:ok, %{r | armed: timer}, []}
    end
  end

  defp do_handle_info(:drove_flush_due, r), do: do_handle_info(:drove_flush, %{r | armed: nil})

  defp do_handle_info(:drove_flush_now, r) do
    Process.delete(@push_soon)
    {r, diffs} = flush(r)
    {:ok, r, diffs}
  end

  # The NIFs refuse (badarg) binaries longer than any peer may send: counted here instead.
  defp do_handle_info({tag, _from, bin} = msg, r)
       when tag == :drove_delta and is_binary(bin) and byte_size(bin) > @max_message do
    {:ok, bad_message(r, {:too_big, elem(msg, 0), byte_size(bin)}), []}
  end

  defp do_handle_info({tag, _from, _ref, ctx, bin}, r)
       when tag in [:drove_sync_req, :drove_sync_reply] and is_binary(ctx) and is_binary(bin) and
              (byte_size(ctx) > @max_message or byte_size(bin) > @max_message) do
    {:ok, bad_message(r, {:too_big, tag, byte_size(ctx) + byte_size(bin)}), []}
  end

  # A sender becomes a (passive) peer only once one of its messages was valid: garbage from
  # any process changes nothing here.
  defp do_handle_info({:drove_delta, from, bin}, r) when is_pid(from) and is_binary(bin) do
    t0 = Drove.Telemetry.now()

    case Native.join(r.handle, bin, r.want_diffs) do
      {:ok, diffs, n} ->
        Drove.Telemetry.join(r.label, from, bin, n, t0)
        {:ok, r |> note_peer(from) |> bump(:deltas_in, 1), diffs}

      {:error, reason} ->
        {:ok, bad_message(r, {:delta, reason}), []}
    end
  end

  defp do_handle_info({:drove_sync_req, from, ref, ctx, digest}, r)
       when is_pid(from) and is_reference(ref) and is_binary(ctx) and is_binary(digest) do
    t0 = Drove.Telemetry.now()

    case Native.sync_reply(r.handle, ctx, digest, r.max_bytes, @max_manifest_dots) do
      {:ok, chunks, my_ctx, manifest} ->
        Drove.Telemetry.round_reply(r.label, from, chunks, t0)
        r = note_peer(r, from)
        Enum.each(chunks, &send_to(from, {:drove_delta, self(), &1}))
        send_to(from, {:drove_sync_reply, self(), ref, my_ctx, manifest})
        {:ok, bump(r, :deltas_out, length(chunks)), []}

      {:error, reason} ->
        {:ok, bad_message(r, {:sync_req, reason}), []}
    end
  end

  defp do_handle_info({:drove_sync_sum, from, ref, sum}, r)
       when is_pid(from) and is_reference(ref) and is_binary(sum) do
    case Native.summary_match(r.handle, sum) do
      true ->
        send_to(from, {:drove_sync_same, self(), ref})
        {:ok, note_peer(r, from), []}

      false ->
        send_to(from, {:drove_sync_diff, self(), ref})
        {:ok, note_peer(r, from), []}

      {:error, reason} ->
        {:ok, bad_message(r, {:sync_sum, reason}), []}
    end
  end

  defp do_handle_info({:drove_sync_same, from, ref}, r)
       when is_pid(from) and is_reference(ref) do
    case find_round(r, ref, :sum) do
      nil ->
        {:ok, r, []}

      {dest, n} ->
        r = put_in(r.neighbours[dest], %{n | round: nil, pid: from, sum: true})
        {:ok, r |> bump(:rounds_done, 1) |> bump(:rounds_same, 1), []}
    end
  end

  defp do_handle_info({:drove_sync_diff, from, ref}, r)
       when is_pid(from) and is_reference(ref) do
    case find_round(r, ref, :sum) do
      nil ->
        {:ok, r, []}

      {dest, n} ->
        # the same ref goes on: the reply to the full request closes this round
        n = %{n | pid: from, sum: true}
        send_to(from, full_request(r, ref))
        {:ok, put_in(r.neighbours[dest], %{n | round: {ref, deadline(r), :full}}), []}
    end
  end

  defp do_handle_info({:drove_sync_reply, from, ref, ctx, manifest}, r)
       when is_pid(from) and is_reference(ref) and is_binary(ctx) and is_binary(manifest) do
    r =
      case find_round(r, ref, :full) do
        # a reply to a round we gave up on still carries valid data
        nil -> r
        # the next round starts with a summary again (see expire_rounds/1)
        {dest, n} -> put_in(r.neighbours[dest], %{n | round: nil, pid: from, sum: true})
      end

    finish_round(r, from, ctx, manifest)
  end

  # Sent after a final flush: answered once the deltas sent before it are joined (messages
  # between two processes keep their order).
  defp do_handle_info({:drove_ping, from, ref}, r) when is_pid(from) and is_reference(ref) do
    send_to(from, {:drove_pong, ref, self()})
    {:ok, r, []}
  end

  defp do_handle_info({:drove_pong, _ref, _from}, r), do: {:ok, r, []}

  defp do_handle_info({:drove_bye, from}, r) when is_pid(from) do
    case Map.pop(r.passive, from) do
      {nil, _} ->
        {:ok, r, []}

      {mref, passive} ->
        Process.demonitor(mref, [:flush])
        {:ok, %{r | passive: passive}, []}
    end
  end

  defp do_handle_info({:DOWN, mref, :process, _obj, _reason}, r) do
    case Enum.find(r.neighbours, fn {_, n} -> n.mref == mref end) do
      {dest, n} ->
        {:ok, put_in(r.neighbours[dest], %{n | mref: nil, up: false, round: nil, sum: true}), []}

      nil ->
        case Enum.find(r.passive, fn {_, m} -> m == mref end) do
          {pid, _} -> {:ok, %{r | passive: Map.delete(r.passive, pid)}, []}
          nil -> :unknown
        end
    end
  end

  defp do_handle_info(msg, r) when is_tuple(msg) and tuple_size(msg) > 0 do
    if elem(msg, 0) in @tags do
      {:ok, bad_message(r, msg), []}
    else
      :unknown
    end
  end

  defp do_handle_info(_msg, _r), do: :unknown

  @doc """
  For an owner with `:pause_us`, from its own process: its local writes are pushed as soon as
  it has handled its current message, whatever the pause (one push for all the writes of
  that message). What the owner writes itself (a removal, a change of owner) goes at once;
  the pause is for the bursts of writes other processes make through the handle.
  """
  @spec push_soon() :: :ok
  def push_soon do
    unless Process.get(@push_soon) do
      Process.put(@push_soon, true)
      Kernel.send(self(), :drove_flush_now)
    end

    :ok
  end

  @doc "Ships the write log to every neighbour; returns the local read changes."
  @spec flush(t()) :: {t(), [diff()]}
  def flush(r) do
    case ship(r) do
      {r, diffs, 0} ->
        {r, diffs}

      {r, diffs, _} ->
        # poll again after the messages already queued: writes made meanwhile go in one batch
        Kernel.send(self(), :drove_flush)
        {r, diffs}
    end
  end

  defp ship(r) do
    targets = push_targets(r)
    t0 = Drove.Telemetry.now()

    case Native.take_outbox(r.handle, r.max_bytes, targets != []) do
      {:error, reason} ->
        Logger.error("Drove replica #{inspect(r.label)}: outbox: #{inspect(reason)}")
        {r, [], 0}

      # nobody to push to: the log was emptied unencoded; poll again like after a push
      {:dropped, diffs} ->
        {r, diffs, 1}

      {chunks, diffs} ->
        # only an empty take (no chunk and no diff) re-arms the NIF's notification for the
        # next write: after any other, poll again (a write made while the log was off leaves
        # diffs and no chunk)
        for c <- chunks, t <- targets, do: send_to(t, {:drove_delta, self(), c})
        Drove.Telemetry.push(r.label, chunks, length(targets), t0)
        r = if chunks == [], do: r, else: %{r | last_push: System.monotonic_time(:microsecond)}
        taken = length(chunks) + length(diffs)
        {bump(r, :deltas_out, length(chunks) * length(targets)), diffs, taken}
    end
  end

  # Ship until a take finds the log empty (bounded: writers may still be writing).
  defp flush_all(r, acc, 0), do: {r, acc}

  defp flush_all(r, acc, n) do
    case ship(r) do
      {r, diffs, 0} -> {r, acc ++ diffs}
      {r, diffs, _} -> flush_all(r, acc ++ diffs, n - 1)
    end
  end

  @doc "Last flush and goodbyes, for the owner's terminate/2."
  @spec terminate(t()) :: {t(), [diff()]}
  def terminate(r) do
    if r.flusher, do: __MODULE__.Flusher.stop(r.flusher)
    {r, diffs} = flush_all(r, [], 10)
    Enum.each(r.passive, fn {pid, _} -> send_to(pid, {:drove_bye, self()}) end)
    {r, diffs}
  end

  @doc """
  Waits (at most `timeout` ms) until every peer the last writes were pushed to has joined
  them: for an owner that is about to exit and must not lose its last writes.
  Returns the number of peers that did not confirm in time.
  """
  @spec confirm(t(), timeout()) :: non_neg_integer()
  def confirm(r, timeout) do
    {ref, n} = ping(r)
    deadline = System.monotonic_time(:millisecond) + timeout
    await_pongs(ref, n, deadline)
  end

  @doc """
  Sends a ping after everything pushed so far to every push target; each answers
  `{:drove_pong, ref, pid}` once it has joined what came before. Returns the ref and the
  number of pings sent.
  """
  @spec ping(t()) :: {reference(), non_neg_integer()}
  def ping(r) do
    ref = make_ref()
    # only peers that can answer: a node on the other side of a split never will
    connected = [node() | Node.list()]
    targets = Enum.filter(push_targets(r), &(dest_node(&1) in connected))
    Enum.each(targets, &send_to(&1, {:drove_ping, self(), ref}))
    {ref, length(targets)}
  end

  defp await_pongs(_ref, 0, _deadline), do: 0

  defp await_pongs(ref, n, deadline) do
    left = max(deadline - System.monotonic_time(:millisecond), 0)

    receive do
      {:drove_pong, ^ref, _} -> await_pongs(ref, n - 1, deadline)
    after
      left -> n
    end
  end

  @doc "The pid of the calling process's parent (its supervisor), or nil."
  @spec parent() :: pid() | nil
  def parent do
    case Process.get(:"$ancestors") do
      [parent | _] when is_pid(parent) -> parent
      [name | _] when is_atom(name) -> Process.whereis(name)
      _ -> nil
    end
  end

  @spec info(t()) :: map()
  def info(r) do
    up = for {_, %Neighbour{up: true, dest: d}} <- r.neighbours, do: d

    r.stats
    |> Map.merge(%{
      neighbours: Map.keys(r.neighbours),
      neighbours_up: up,
      passive_peers: Map.keys(r.passive),
      sends_dropped: :counters.get(r.dropped, 1),
      rounds_in_flight: Enum.count(r.neighbours, fn {_, n} -> n.round != nil end)
    })
  end

  @doc "Counts (and logs, rate-limited) a message that was ignored."
  @spec bad_message(t(), term()) :: t()
  def bad_message(r, what) do
    n = r.stats.bad_messages + 1
    Drove.Telemetry.bad_message(r.label, what)

    if n <= 10 or rem(n, 1000) == 0 do
      Logger.warning(
        "Drove replica #{inspect(r.label)} ignored a bad message (#{n} so far): " <>
          inspect(what, limit: 5, printable_limit: 64)
      )
    end

    bump(r, :bad_messages, 1)
  end

  # ------------------------------------------------------------------ internals

  # After every change of the neighbours: local writes are logged for the eager push only
  # while there is someone to push to (a neighbour that comes later gets everything by the
  # anti-entropy round its arrival starts), and the flusher, if any, learns the targets.
  defp sync_targets(%{flusher: nil} = r) do
    # called after every message: without a flusher only whether there is a target counts
    up? = Enum.any?(r.neighbours, fn {_, n} -> n.up end)
    set_logging(r, up? or (map_size(r.passive) > 0 and push_targets(r) != []))
  end

  defp sync_targets(r) do
    targets = push_targets(r)
    r = set_logging(r, targets != [])

    cond do
      r.flusher == nil or targets == r.targets_sent ->
        r

      true ->
        Kernel.send(r.flusher, {:targets, targets})
        %{r | targets_sent: targets}
    end
  end

  defp set_logging(%{logging: on} = r, on), do: r

  defp set_logging(r, on) do
    :ok = Native.set_logging(r.handle, on)
    %{r | logging: on}
  end

  defp push_targets(r) do
    active = for {_, %Neighbour{up: true} = n} <- r.neighbours, do: addressable(n.pid || n.dest)
    active_pids = for {_, %Neighbour{pid: p}} <- r.neighbours, is_pid(p), do: p
    active ++ (Map.keys(r.passive) -- active_pids)
  end

  defp finish_round(r, from, ctx, manifest) do
    t0 = Drove.Telemetry.now()

    case Native.sync_finish(r.handle, ctx, manifest, r.max_bytes, r.want_diffs) do
      {:ok, chunks, diffs, removed} ->
        Drove.Telemetry.round_finish(r.label, from, chunks, diffs, removed, t0)
        Enum.each(chunks, &send_to(from, {:drove_delta, self(), &1}))
        {:ok, r |> bump(:deltas_out, length(chunks)) |> bump(:rounds_done, 1), diffs}

      {:error, reason} ->
        {:ok, bad_message(r, {:sync_reply, reason}), []}
    end
  end

  defp deadline(r), do: System.monotonic_time(:millisecond) + max(10 * r.interval, 5_000)

  defp find_round(r, ref, kind) do
    Enum.find(r.neighbours, fn {_, n} -> match?({^ref, _, ^kind}, n.round) end)
  end

  defp full_request(r, ref),
    do: {:drove_sync_req, self(), ref, Native.ctx(r.handle), Native.digest(r.handle)}

  # Rounds that got no reply in time are dropped; a summary round that went unanswered makes
  # the next round with that neighbour a full one (a node of an older version ignores
  # summaries), and any answer makes the one after a summary round again (a busy node may
  # have answered too late).
  defp expire_rounds(r) do
    now = System.monotonic_time(:millisecond)

    neighbours =
      Map.new(r.neighbours, fn
        {d, %Neighbour{round: {_, dl, kind}} = n} when dl < now ->
          {d, %{n | round: nil, sum: n.sum and kind != :sum}}

        other ->
          other
      end)

    %{r | neighbours: neighbours}
  end

  # The next `fanout` neighbours that are up and have no round in flight, in turn.
  defp start_due_rounds(r) do
    dests = r.neighbours |> Map.keys() |> Enum.sort()
    count = length(dests)
    k = if r.fanout, do: min(r.fanout, count), else: fanout(count)

    if count == 0 or k == 0 do
      r
    else
      start = rem(r.cursor, count)
      {tail, head} = Enum.split(dests, start)

      due =
        (head ++ tail)
        |> Enum.filter(fn d ->
          n = r.neighbours[d]
          n.up and n.round == nil
        end)
        |> Enum.take(k)

      last = List.last(due)
      cursor = if last, do: Enum.find_index(dests, &(&1 == last)) + 1, else: start
      start_rounds(%{r | cursor: cursor}, due, :sum)
    end
  end

  defp start_rounds(r, dests, kind) do
    # one summary for all: taken once, before any of these rounds can change the replica
    sum =
      if kind == :sum and Enum.any?(dests, &r.neighbours[&1].sum),
        do: Native.summary(r.handle)

    neighbours =
      Enum.reduce(dests, r.neighbours, fn dest, acc ->
        n = acc[dest]
        ref = make_ref()
        to = n.pid || dest

        kind =
          if kind == :sum and n.sum do
            send_to(to, {:drove_sync_sum, self(), ref, sum})
            :sum
          else
            send_to(to, full_request(r, ref))
            :full
          end

        Map.put(acc, dest, %{n | round: {ref, deadline(r), kind}})
      end)

    Drove.Telemetry.rounds_started(r.label, length(dests))
    bump(%{r | neighbours: neighbours}, :rounds, length(dests))
  end

  defp monitor(%Neighbour{dest: dest} = n) do
    if reachable?(dest) do
      mref = Process.monitor(dest)
      pid = if is_pid(dest), do: dest, else: n.pid
      %{n | mref: mref, up: true, pid: pid}
    else
      %{n | mref: nil, up: false, round: nil}
    end
  end

  # A monitor of a process on a node whose connection is busy would suspend this process
  # until the connection drains (a stalled peer: for good), and one on a node that is not
  # connected would try to connect, synchronously: neither may hold up the owner. Such a
  # neighbour stays down, and is tried again at the next tick (remonitor/1). The probe is a
  # message to a name nobody registers, dropped on arrival.
  defp reachable?(dest) do
    case dest_node(dest) do
      node when node == node() -> true
      node -> :erlang.send({:drove_probe, node}, :probe, [:noconnect, :nosuspend]) == :ok
    end
  end

  defp remonitor(r) do
    neighbours =
      Map.new(r.neighbours, fn
        {d, %Neighbour{mref: nil} = n} -> {d, monitor(%{n | pid: nil})}
        other -> other
      end)

    %{r | neighbours: neighbours}
  end

  defp note_peer(r, pid) do
    known? =
      Map.has_key?(r.passive, pid) or
        Enum.any?(r.neighbours, fn {d, n} -> n.pid == pid or d == pid end)

    if known?, do: r, else: %{r | passive: Map.put(r.passive, pid, Process.monitor(pid))}
  end

  # Never block on connection set-up: an unconnected peer is repaired by anti-entropy later.
  defp dest_node(pid) when is_pid(pid), do: node(pid)
  defp dest_node({_name, node}), do: node
  defp dest_node(name) when is_atom(name), do: node()

  # Never wait on a peer (see Drove.Replicator.Sender): a message that finds the connection
  # busy waits in a sender process of its own, and is dropped and counted when too much
  # waits already; the anti-entropy rounds repair what it carried. Used by the owner and its
  # flusher.
  @doc false
  @spec send_to(pid() | atom() | {atom(), node()}, term()) :: :ok | :noconnect | :dropped
  def send_to(dest, msg) do
    case __MODULE__.Sender.send(addressable(dest), msg) do
      :dropped ->
        case Process.get(@dropped) do
          nil -> :ok
          ref -> :counters.add(ref, 1, 1)
        end

        :dropped

      other ->
        other
    end
  end

  # A bare local name raises badarg when nothing is registered under it (a member that is
  # not started yet, or has stopped); {name, node()} is dropped silently instead.
  defp addressable(name) when is_atom(name), do: {name, node()}
  defp addressable(dest), do: dest

  defp bump(r, key, n), do: %{r | stats: Map.update!(r.stats, key, &(&1 + n))}

  defmodule Flusher do
    @moduledoc false
    # Takes the write log and pushes it to the current targets whenever the NIF says it
    # is not empty. Linked to the owner; stopped synchronously before the owner's last flush.
    require Logger

    # how long a push waits for more writes once one has just left
    @coalesce_ms 1

    @spec start_link(reference(), pid(), pos_integer(), :counters.counters_ref(), term()) :: pid()
    def start_link(handle, owner, max_bytes, dropped, label) do
      s = %{handle: handle, owner: owner, max: max_bytes, targets: [], label: label}

      spawn_link(fn ->
        Process.put({Drove.Replicator, :sends_dropped}, dropped)
        loop(s)
      end)
    end

    @spec stop(pid()) :: :ok
    def stop(pid) do
      Process.unlink(pid)
      ref = Process.monitor(pid)
      Kernel.send(pid, :stop)

      receive do
        {:DOWN, ^ref, :process, ^pid, _} -> :ok
      after
        5000 ->
          Process.exit(pid, :kill)
          :ok
      end
    end

    defp loop(s) do
      receive do
        :drove_flush ->
          t0 = Drove.Telemetry.now()

          case Native.take_outbox(s.handle, s.max, s.targets != []) do
            {:error, reason} ->
              Logger.error("Drove flusher: outbox: #{inspect(reason)}")
              loop(s)

            {[], []} ->
              loop(s)

            {:dropped, _diffs} ->
              Kernel.send(self(), :drove_flush)
              loop(s)

            {chunks, _diffs} ->
              for c <- chunks, t <- s.targets do
                Drove.Replicator.send_to(t, {:drove_delta, s.owner, c})
              end

              Drove.Telemetry.push(s.label, chunks, length(s.targets), t0)

              # poll again after a pause: the writes made meanwhile go in one message (see
              # take_outbox). A lone write leaves at once; under a burst of writes each push
              # carries a millisecond's worth, which is what makes a burst cheap to send and
              # to join (a push per write or two costs both nodes more than the writes).
              pause(s, System.monotonic_time(:millisecond) + @coalesce_ms)
          end

        {:targets, targets} ->
          loop(%{s | targets: targets})

        :stop ->
          :ok
      end
    end

    defp pause(s, until) do
      receive do
        {:targets, targets} ->
          pause(%{s | targets: targets}, until)

        :stop ->
          :ok
      after
        max(until - System.monotonic_time(:millisecond), 0) ->
          Kernel.send(self(), :drove_flush)
          loop(s)
      end
    end
  end
end
