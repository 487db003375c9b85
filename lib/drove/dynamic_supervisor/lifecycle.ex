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
end
