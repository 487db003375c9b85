defmodule Drove.LifecycleTest do
  # Every combination of the facts Drove.DynamicSupervisor.Lifecycle decides on, against
  # tables written out by hand: what happens to a child that goes down here, and to a child
  # whose entry changes elsewhere.
  use ExUnit.Case, async: true

  alias Drove.DynamicSupervisor.Lifecycle

  @reasons [:normal, :shutdown, {:shutdown, :x}, :killed, :crashed]
  @restarts [:permanent, :transient, :temporary]

  # F forget, L relinquish, R restart here, D delete. One row per restart rule
  # (permanent, transient, temporary), one column per reason (:normal, :shutdown,
  # {:shutdown, _}, :killed, a crash).
  @exit_table %{
    # not being stopped here, the member running
    {nil, false} => ~w(RRRRR DDDRR DDDDD),
    # not being stopped here, the member stopping gracefully: each exit of the stop's is a
    # hand-over; a child that ended for good by itself is deleted
    {nil, true} => ~w(LLLLL DLDLL DLDLD),
    # moved by :active redistribution (running or stopping)
    {:redistribute, false} => ~w(LLLLL DLDLL DLDLD),
    {:redistribute, true} => ~w(LLLLL DLDLL DLDLD),
    # terminate_child: its entry is gone already
    {:terminate, false} => ~w(FFFFF FFFFF FFFFF),
    {:terminate, true} => ~w(FFFFF FFFFF FFFFF)
  }

  # evicted as a duplicate: depends on whose the entry is by now, not on shutting down
  @evict_table %{
    # the entry says ours again: nobody runs it, hand it over (or it ended for good)
    true => ~w(LLLLL DLDLL DLDLD),
    # another member's copy's entry: leave it alone whatever the exit
    false => ~w(FFFFF FFFFF FFFFF)
  }

  @letters %{"F" => :forget, "L" => :relinquish, "R" => :restart_here, "D" => :delete}

  defp expected(rows, restart, reason) do
    row = Enum.at(rows, Enum.find_index(@restarts, &(&1 == restart)))
    letter = String.at(row, Enum.find_index(@reasons, &(&1 == reason)))
    Map.fetch!(@letters, letter)
  end

  test "on_exit: every stop, shutting-down flag, restart rule, reason and owner" do
    combos =
      for stop <- [nil, :terminate, :evict, :redistribute],
          shutting_down <- [false, true],
          restart <- @restarts,
          reason <- @reasons,
          mine <- [false, true] do
        facts = %{
          stop: stop,
          shutting_down: shutting_down,
          restart: restart,
          reason: reason,
          mine: mine
        }

        rows =
          if stop == :evict,
            do: Map.fetch!(@evict_table, mine),
            else: Map.fetch!(@exit_table, {stop, shutting_down})

        assert Lifecycle.on_exit(facts) == expected(rows, restart, reason), inspect(facts)
        facts
      end

    assert length(combos) == 240
  end

  test "restarts?: OTP's restart rules" do
    for restart <- @restarts, reason <- @reasons do
      expected =
        case restart do
          :permanent -> true
          :temporary -> false
          :transient -> reason in [:killed, :crashed]
        end

      assert Lifecycle.restarts?(restart, reason) == expected
    end
  end

  # Entry changes. running: a copy runs here (pid) or not; known: the child is known here at
  # all (starting or restarting counts); mine: the entry names this member; superseded: the
  # entry is a claim of ours whose copy we evicted for another member's claim.
  test "on_entry: an entry joined from a peer, every combination" do
    here = self()
    other = spawn(fn -> :ok end)

    for running <- [here, nil],
        known <- [true, false],
        running == nil or known,
        stopping <- [nil, :evict, :redistribute, :terminate],
        owner <- [:me, nil, :other],
        pid <- [here, other],
        ready <- [false, true],
        superseded <- [false, true] do
      facts = %{
        change: :add,
        running: running,
        known: known,
        stopping: stopping,
        owner: owner,
        pid: pid,
        mine: owner == :me,
        ready: ready,
        superseded: superseded
      }

      expected =
        case {running, owner} do
          # our claim that lost, shown again: the claims that beat it were deleted (the
          # child ended for good where it ran), so it has ended
          {_, :me} when superseded -> :delete
          # ours and it runs here: say which pid if the entry names another
          {^here, :me} -> if pid == here, do: :keep, else: :restate
          # handed over elsewhere while it runs here: this member keeps it
          {^here, nil} -> :restate
          # another member's: the copy here is a duplicate, unless it is being stopped
          # already (evicted or terminated)
          {^here, :other} -> if stopping in [nil, :redistribute], do: :evict, else: :keep
          # ours, not known here, and this member has started: an earlier life wrote it
          {nil, :me} -> if not known and ready, do: :relinquish, else: :keep
          {nil, _} -> :keep
        end

      assert Lifecycle.on_entry(facts) == expected, inspect(facts)
    end
  end

  test "on_entry: an entry deleted elsewhere" do
    for running <- [self(), nil], stopping <- [nil, :evict, :redistribute, :terminate] do
      facts = %{
        change: :remove,
        running: running,
        known: running != nil,
        stopping: stopping,
        owner: nil,
        pid: nil,
        mine: false,
        ready: true,
        superseded: false
      }

      # it still runs here and is not being stopped: it stays listed
      expected = if running != nil and stopping == nil, do: :restate, else: :keep
      assert Lifecycle.on_entry(facts) == expected, inspect(facts)
    end
  end

  # State handoff. Which children are asked, for how long: one row per handoff flag
  # (absent, false, true), one column per shutdown (absent, 0, 300, :infinity,
  # :brutal_kill), for a worker and a supervisor. S skip, a number or I (:infinity): ask.
  @begin_table %{
    worker: %{nil => ~w(S S S S S), false => ~w(S S S S S), true => ~w(5000 0 300 I S)},
    supervisor: %{nil => ~w(S S S S S), false => ~w(S S S S S), true => ~w(I 0 300 I S)}
  }

  test "begin_handoff: every handoff flag, shutdown and type" do
    shutdowns = [nil, 0, 300, :infinity, :brutal_kill]

    for type <- [:worker, :supervisor],
        handoff <- [nil, false, true],
        {shutdown, col} <- Enum.with_index(shutdowns) do
      spec = %{id: :x, start: {M, :f, []}, type: type}
      spec = if handoff == nil, do: spec, else: Map.put(spec, :handoff, handoff)
      spec = if shutdown == nil, do: spec, else: Map.put(spec, :shutdown, shutdown)

      expected =
        case @begin_table |> Map.fetch!(type) |> Map.fetch!(handoff) |> Enum.at(col) do
          "S" -> :skip
          "I" -> {:ask, :infinity}
          ms -> {:ask, String.to_integer(ms)}
        end

      assert Lifecycle.begin_handoff(spec) == expected, inspect(spec)
    end
  end

  test "on_answer: every kind of answer, under and over the size limit" do
    limit = 100

    rows = [
      {{:resume, :s}, 10, :carry},
      {{:resume, :s}, 100, :carry},
      {{:resume, :s}, 101, {:fresh, {:too_big, 101, 100}}},
      {:restart, nil, {:fresh, :restart}},
      {{:error, :timeout}, nil, {:fresh, {:no_answer, :timeout}}},
      {{:error, :noproc}, nil, {:fresh, {:no_answer, :noproc}}},
      {:ok, nil, {:fresh, {:bad_answer, :ok}}},
      {{:resume, :a, :b}, nil, {:fresh, {:bad_answer, {:resume, :a, :b}}}}
    ]

    for {answer, size, expected} <- rows do
      facts = %{answer: answer, size: size, limit: limit}
      assert Lifecycle.on_answer(facts) == expected, inspect(facts)
    end
  end

  test "end_handoff: only a takeover that claims an entry carrying a state delivers it" do
    for start <- [:new, :takeover, :restart],
        carried <- [false, true],
        claimed <- [false, true] do
      facts = %{start: start, carried: carried, claimed: claimed}

      expected =
        if {start, carried, claimed} == {:takeover, true, true}, do: :deliver, else: :none

      assert Lifecycle.end_handoff(facts) == expected, inspect(facts)
    end
  end
end
