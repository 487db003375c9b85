defmodule Drove.ReplicatorPauseTest do
  # A replicator with :pause_us (the supervisor's) pushes a lone write at once and holds the
  # writes that follow within the pause, which go together at its end or with the owner's
  # own flush. This test process is the owner and, under a registered name, the one peer:
  # a push is a message in its own mailbox the moment the replicator sends it.
  use ExUnit.Case, async: true

  alias Drove.{Native, Replicator}

  @hour_us 3_600_000_000

  defp pushed do
    receive do
      {:drove_delta, _from, chunk} -> [chunk | pushed()]
    after
      0 -> []
    end
  end

  defp keys_in(chunks) do
    peer = Native.replica_new(99, self(), false)
    for c <- chunks, do: {:ok, _, _} = Native.join(peer, c, false)
    peer |> Native.to_list() |> Enum.map(&elem(&1, 0)) |> Enum.sort()
  end

  defp notified(r) do
    assert_receive :drove_flush
    {:ok, r, []} = Replicator.handle_info(:drove_flush, r)
    r
  end

  # A replicator with an hour-long pause whose one peer is this process (registered as
  # `name`), after its first write: a lone write, pushed at once.
  defp paused_after_first_write(name, rid) do
    Process.register(self(), name)
    handle = Native.replica_new(rid, self(), false)
    r = Replicator.new(handle, interval: 500, max_bytes: 1_048_576, pause_us: @hour_us)
    r = Replicator.set_neighbours(r, [name], nil)

    :ok = Native.put(handle, Native.key(:first), Native.value(1))
    r = notified(r)
    assert keys_in(pushed()) == [:first]
    {handle, r}
  end

  test "a lone write goes at once; the writes within the pause wait for its end" do
    {handle, r} = paused_after_first_write(:pause_peer, 1)

    # within the pause: held, the timer armed once for all of them
    :ok = Native.put(handle, Native.key(:second), Native.value(2))
    r = notified(r)
    assert pushed() == []
    assert is_integer(Process.read_timer(r.armed))
    :ok = Native.put(handle, Native.key(:third), Native.value(3))
    send(self(), :drove_flush)
    r = notified(r)
    assert pushed() == []

    # the owner's own flush is not held back, and takes both
    {r, _} = Replicator.flush(r)
    assert keys_in(pushed()) == [:second, :third]
    assert r.stats.deltas_out == 2

    # a write after that flush, and the timer set before it fires (sent here as the timer
    # would send it): the pause counts from that flush, so the write waits for a new timer
    :ok = Native.put(handle, Native.key(:fourth), Native.value(4))
    old_timer = r.armed
    Process.cancel_timer(old_timer)
    r = notified(r)
    send(self(), :drove_flush_due)
    assert_receive :drove_flush_due
    {:ok, r, []} = Replicator.handle_info(:drove_flush_due, r)
    assert pushed() == []
    assert r.armed != old_timer and is_integer(Process.read_timer(r.armed))

    # ... which, when due, pushes it
    Process.cancel_timer(r.armed)
    r = %{r | last_push: r.last_push - @hour_us}
    {:ok, r, []} = Replicator.handle_info(:drove_flush_due, r)
    assert keys_in(pushed()) == [:fourth]
    assert r.armed == nil
  end

  test "push_soon: the owner's own writes go at once, with what the pause held" do
    {handle, r} = paused_after_first_write(:soon_peer, 3)

    # a write of another process's, held by the pause
    :ok = Native.put(handle, Native.key(:held), Native.value(2))
    r = notified(r)
    assert pushed() == []

    # the owner writes and asks once per message, however many writes it made
    :ok = Native.put(handle, Native.key(:own), Native.value(3))
    :ok = Replicator.push_soon()
    :ok = Replicator.push_soon()
    assert_receive :drove_flush_now
    refute_received :drove_flush_now
    {:ok, r, []} = Replicator.handle_info(:drove_flush_now, r)
    assert keys_in(pushed()) == [:held, :own]

    # and may ask again for its next message
    :ok = Replicator.push_soon()
    assert_receive :drove_flush_now
    {:ok, _r, []} = Replicator.handle_info(:drove_flush_now, r)
  end

  test "without :pause_us every notification pushes" do
    Process.register(self(), :nopause_peer)
    handle = Native.replica_new(2, self(), false)
    r = Replicator.new(handle, interval: 500, max_bytes: 1_048_576)
    r = Replicator.set_neighbours(r, [:nopause_peer], nil)

    r =
      Enum.reduce([:a, :b], r, fn k, r ->
        :ok = Native.put(handle, Native.key(k), Native.value(k))
        r = notified(r)
        assert keys_in(pushed()) == [k]
        # the replicator polls again after a take that found something
        notified(r)
      end)

    assert r.stats.deltas_out == 2
  end
end
