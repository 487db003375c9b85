defmodule Drove.DynamicSupervisor.Lifecycle do
  @moduledoc false
  # The decisions of a child's life on one member, as pure functions: facts in, one decision
  # out. Drove.DynamicSupervisor.Impl gathers the facts and carries the decisions out; the
  # whole input space of each is checked against a written table in
  # test/drove/lifecycle_test.exs.

  @typedoc "How this member was stopping the child when it went down, if it was."
  @type stop :: nil | :terminate | :evict | :redistribute

  @typedoc "What to do when a child running here goes down."
  @type on_exit ::
          :forget
          | :relinquish
          | :restart_here
          | :delete

  @typedoc "The facts of a child's exit here."
  @type exit_facts :: %{
          stop: stop(),
          shutting_down: boolean(),
          restart: :permanent | :transient | :temporary,
          reason: term(),
          mine: boolean()
        }

  @doc """
  A child running here went down. `stop`: how this member was stopping it (terminate_child,
  evicted as a duplicate, moved by :active redistribution), `shutting_down`: this member is
  stopping gracefully, `mine`: the replicated entry names this member as the owner.

    * `:forget` - drop it here and leave the entry alone (terminated: its entry is gone
      already; evicted: the entry is another member's copy's);
    * `:relinquish` - drop it here and hand the entry over (owner nil), to be placed again;
    * `:restart_here` - the node's DynamicSupervisor restarts it (its restart rule says so);
    * `:delete` - it has ended for good: drop it and delete the entry everywhere.

  A child being stopped here that ended for good by itself meanwhile (a transient child's
  `:normal` exit, a temporary child's crash; not the stop's own `:shutdown` or `:killed`)
  has ended: its entry goes, as at any other time. Any other exit counts as the stop's.
  """
  @spec on_exit(exit_facts()) :: on_exit()
  def on_exit(%{stop: :terminate}), do: :forget

  def on_exit(%{stop: stop, shutting_down: shutting_down, restart: restart, reason: reason} = f) do
    ended? = reason not in [:shutdown, :killed] and not restarts?(restart, reason)

    cond do
      # evicted because another member's claim showed first; if the entry says ours again
      # by now (that claim lost where it was resolved), nobody runs it: hand it over
      stop == :evict and not ended? -> if f.mine, do: :relinquish, else: :forget
      (stop == :redistribute or shutting_down) and not ended? -> :relinquish
      restarts?(restart, reason) -> :restart_here
      # ended while being evicted: the entry is another member's copy's
      stop == :evict and not f.mine -> :forget
      true -> :delete
    end
  end

  @doc "Whether a child with this restart rule is restarted after an exit with `reason`."
  @spec restarts?(:permanent | :transient | :temporary, term()) :: boolean()
  def restarts?(:permanent, _), do: true
  def restarts?(:temporary, _), do: false
  def restarts?(:transient, :normal), do: false
  def restarts?(:transient, :shutdown), do: false
  def restarts?(:transient, {:shutdown, _}), do: false
  def restarts?(:transient, _), do: true

  @typedoc "What to do when the replicated entry of a child changes."
  @type on_entry :: :keep | :restate | :evict | :relinquish | :delete

  @typedoc """
  The facts of an entry change: `change` is `:add` (a new owner, spec and pid joined) or
  `:remove` (the entry was deleted elsewhere); `running` is the pid of the child's copy
  here, or nil; `known` whether this member has the child at all (running, or being started
  or restarted here); `stopping` how this member is stopping its copy (see `t:stop/0`); `owner`
  and `pid` those of the entry after the change (`:add` only); `mine` whether `owner` is
  this member; `ready` whether this member has started (it has claimed its own children);
  `superseded` whether the entry is a claim of this member that lost to another member's
  claim here (it evicted its copy `pid` for it) and that it has not written again since.
  """
  @type entry_facts :: %{
          change: :add | :remove,
          running: pid() | nil,
          known: boolean(),
          stopping: stop(),
          owner: term(),
          pid: pid() | nil,
          mine: boolean(),
          ready: boolean(),
          superseded: boolean()
        }

  @doc """
  The entry of a child changed (joined from a peer).

    * `:keep` - take the change as it is;
    * `:restate` - write the entry again as this member's, with the copy running here (a
      stale write of ours won, it was handed over or deleted elsewhere while it runs here:
      it still runs, so it stays listed);
    * `:evict` - the entry's owner is another member: stop the copy here (a duplicate);
    * `:relinquish` - the entry is ours but nothing runs it here (an earlier life of this
      member wrote it): hand it over;
    * `:delete` - the entry is a claim of ours that lost to another member's claim, shown
      again: the claims that beat it were deleted by members that had not seen it, which
      happens only when the child ended for good where it ran (a normal end, terminate_child,
      a failed start). It has ended: delete ours too. (Handing it over would start a child
      that ended normally again.)
  """
  @spec on_entry(entry_facts()) :: on_entry()
  def on_entry(%{change: :add, mine: true, superseded: true}), do: :delete

  def on_entry(%{change: :add, running: running} = f) when is_pid(running) do
    cond do
      f.mine and f.pid != running -> :restate
      f.mine -> :keep
      f.owner == nil -> :restate
      f.stopping in [nil, :redistribute] -> :evict
      true -> :keep
    end
  end

  def on_entry(%{change: :add} = f),
    do: if(f.mine and not f.known and f.ready, do: :relinquish, else: :keep)

  def on_entry(%{change: :remove, running: running, stopping: nil}) when is_pid(running),
    do: :restate

  def on_entry(%{change: :remove}), do: :keep

  # ------------------------------------------------------------------ state handoff

  @typedoc "Whether a child about to move is asked for its state, and for how long."
  @type begin_handoff :: {:ask, timeout()} | :skip

  @doc """
  A child running here is about to move (this member stops gracefully, or :active
  redistribution moves it). `spec` is its child spec. Only a child with `handoff: true` is
  asked, for at most its `shutdown` time (a worker's default is 5000 ms, a supervisor's
  `:infinity`); a `:brutal_kill` child is not asked (it is given no time to stop).
  """
  @spec begin_handoff(map()) :: begin_handoff()
  def begin_handoff(%{handoff: true} = spec) do
    default = if Map.get(spec, :type, :worker) == :supervisor, do: :infinity, else: 5000

    case Map.get(spec, :shutdown, default) do
      :brutal_kill -> :skip
      :infinity -> {:ask, :infinity}
      ms when is_integer(ms) and ms >= 0 -> {:ask, ms}
      _ -> :skip
    end
  end

  def begin_handoff(_spec), do: :skip

  @typedoc "What the answer of a child asked for its state makes of the move."
  @type on_answer :: :carry | {:fresh, reason :: term()}

  @typedoc """
  The facts of an answer: `answer` what the child's `{:drove, :begin_handoff}` call gave
  (`{:error, reason}` when the call exited: a timeout, the child went down), `size` the
  external size of the state of a `{:resume, state}` answer (nil otherwise), `limit` the
  supervisor's `handoff_max_bytes`.
  """
  @type answer_facts :: %{answer: term(), size: non_neg_integer() | nil, limit: pos_integer()}

  @doc """
  The child answered (or did not):

    * `:carry` - `{:resume, state}` within the size limit: the state goes with the entry;
    * `{:fresh, reason}` - the child moves and starts fresh: it asked to (`:restart`), it
      did not answer in time or went down (`{:no_answer, reason}`), its state is over the
      limit (`{:too_big, size, limit}`), or its answer is neither (`{:bad_answer, answer}`).
  """
  @spec on_answer(answer_facts()) :: on_answer()
  def on_answer(%{answer: {:resume, _}, size: size, limit: limit}) when size > limit,
    do: {:fresh, {:too_big, size, limit}}

  def on_answer(%{answer: {:resume, _}}), do: :carry
  def on_answer(%{answer: :restart}), do: {:fresh, :restart}
  def on_answer(%{answer: {:error, reason}}), do: {:fresh, {:no_answer, reason}}
  def on_answer(%{answer: other}), do: {:fresh, {:bad_answer, other}}

  @typedoc """
  The facts of a start here: `start` is `:new` (start_child), `:takeover` (the entry was
  relinquished or its owner is gone) or `:restart` (the node's DynamicSupervisor restarted
  it); `carried` whether the entry this member saw last holds a handed-over state;
  `claimed` whether this start claims the entry (false: another member's copy won).
  """
  @type start_facts :: %{
          start: :new | :takeover | :restart,
          carried: boolean(),
          claimed: boolean()
        }

  @doc """
  A child started here: `:deliver` its handed-over state (cast `{:drove, :end_handoff,
  state}` before the entry names it), or `:none`. Only a takeover that claims an entry
  carrying a state delivers it; a restart never does (the claim wrote the entry without the
  state, so the state is delivered once).
  """
  @spec end_handoff(start_facts()) :: :deliver | :none
  def end_handoff(%{start: :takeover, carried: true, claimed: true}), do: :deliver
  def end_handoff(_facts), do: :none
end
