defmodule Drove.Owner do
  @moduledoc """
  The skeleton every process that owns a replica plugs into: `Drove.CRDT`,
  `Drove.Registry.Server` and `Drove.DynamicSupervisor.Impl`.

  Each of them is a GenServer whose state holds at least `:name`, `:handle` (the replica) and
  `:repl` (its `Drove.Replicator`). What they do alike lives here, once:

    * `open/2`, from `init/1`: traps exits, creates the replica and its replicator, and
      schedules the first sync round;
    * `handle_cast/2`, `handle_info/3` and `handle_call/3`, as each owner's last clause:
      neighbour changes, sync rounds and the replication protocol, and the counting of
      messages that are none of these (a peer can send anything; nothing it sends stops an
      owner);
    * `close/1`, from `terminate/2`: the last flush of local writes, goodbyes to the peers,
      and the handle's removal from `Drove.Handles`.

  An owner implements `c:handle_diffs/2` (what changed in its replica through a peer, or
  through a flush of its own writes when it asked for diffs) and may implement
  `c:handle_tick/1` (work due after each sync tick). Its own messages come first in its
  `handle_*` clauses; everything else falls through to this module.
  """

  alias Drove.{Native, Replicator}

  @typedoc "An owner's state: a map or struct with at least these keys."
  @type state :: %{
          required(:name) => term(),
          required(:repl) => Replicator.t(),
          optional(atom()) => term()
        }

  @doc "Changes the replica took in: joins from peers (and local writes' diffs on a flush)."
  @callback handle_diffs([Replicator.diff()], state()) :: state()

  @doc "Work due after each sync tick (a safety net for decisions that raced)."
  @callback handle_tick(state()) :: state()

  @optional_callbacks handle_tick: 1

  @doc """
  Opens an owner's replica, from its `init/1`: traps exits, makes the replica (`native_diffs`:
  whether the NIF keeps local diffs for the owner, the CRDT's `on_diffs`), starts its
  replicator with `repl_opts` (`Drove.Replicator.new/2`: `:label`, `:interval`, `:max_bytes`,
  `:want_diffs`, `:flusher`, `:pause_us`) and schedules the first sync tick. Returns
  `{handle, repl}`; the owner registers the handle in `Drove.Handles` when its own tables are
  ready.
  """
  @spec open(keyword(), boolean()) :: {reference(), Replicator.t()}
  def open(repl_opts, native_diffs \\ false) do
    Process.flag(:trap_exit, true)
    <<rid::64>> = :crypto.strong_rand_bytes(8)
    handle = Native.replica_new(rid, self(), native_diffs)
    repl = Replicator.new(handle, repl_opts)
    Process.send_after(self(), :sync_tick, repl.interval)
    {handle, repl}
  end

  @doc "The last clause of an owner's `handle_call/3`: an unknown call is answered and counted."
  @spec handle_call(term(), GenServer.from(), state()) ::
          {:reply, {:error, :unknown_call}, state()}
  def handle_call(other, _from, s) do
    {:reply, {:error, :unknown_call}, %{s | repl: Replicator.bad_message(s.repl, {:call, other})}}
  end

  @doc """
  The last clause of an owner's `handle_cast/2`: `{:set_neighbours, list}` (sent by
  `Drove.CRDT.set_neighbours/2` and the member code, which check the list; a list that does not
  check out here is counted, not raised), `:sync_now`, and anything else counted.
  """
  @spec handle_cast(term(), state()) :: {:noreply, state()}
  def handle_cast({:set_neighbours, list} = msg, s) when is_list(list) do
    {:noreply, %{s | repl: Replicator.set_neighbours(s.repl, list, s.name)}}
  rescue
    _ in [ArgumentError, FunctionClauseError] ->
      {:noreply, %{s | repl: Replicator.bad_message(s.repl, {:cast, msg})}}
  end

  def handle_cast(:sync_now, s), do: {:noreply, %{s | repl: Replicator.sync_now(s.repl)}}

  def handle_cast(other, s) do
    {:noreply, %{s | repl: Replicator.bad_message(s.repl, {:cast, other})}}
  end

  @doc """
  The last clause of an owner's `handle_info/2`: the sync tick (then the owner's
  `c:handle_tick/1`), the replication protocol (its diffs to the owner's `c:handle_diffs/2`),
  and anything else counted as a bad message.
  """
  @spec handle_info(module(), term(), state()) :: {:noreply, state()}
  def handle_info(owner, :sync_tick, s) do
    Process.send_after(self(), :sync_tick, s.repl.interval)
    s = %{s | repl: Replicator.tick(s.repl)}

    if function_exported?(owner, :handle_tick, 1),
      do: {:noreply, owner.handle_tick(s)},
      else: {:noreply, s}
  end

  def handle_info(owner, msg, s) do
    case Replicator.handle_info(msg, s.repl) do
      {:ok, repl, []} -> {:noreply, %{s | repl: repl}}
      {:ok, repl, diffs} -> {:noreply, owner.handle_diffs(diffs, %{s | repl: repl})}
      # a monitor of the owner's that it has stopped tracking (the supervisor's child that
      # was restarted before its first pid was monitored: that pid's :noproc)
      :unknown when tuple_size(msg) == 5 and elem(msg, 0) == :DOWN -> {:noreply, s}
      :unknown -> {:noreply, %{s | repl: Replicator.bad_message(s.repl, msg)}}
    end
  end

  @doc """
  For an owner's `terminate/2`, after its own last writes: flushes them to the peers, says
  goodbye, and removes the handle from `Drove.Handles`. Returns the replicator (to wait for
  confirmations with `Drove.Replicator.confirm/2`) and the diffs of that last flush.
  """
  @spec close(state()) :: {Replicator.t(), [Replicator.diff()]}
  def close(s) do
    {repl, diffs} = Replicator.terminate(s.repl)
    Drove.Handles.unregister(s.name, self())
    {repl, diffs}
  end
end
