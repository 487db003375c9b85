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

  test "a lone write goes at once; the writes within the pause wait for its end" do
    Process.register(self(), :pause_peer)
    handle = Native.replica_new(1, self(), false)
    r = Replicator.new(handle, interval: 500, max_bytes: 1_048_576, pause_us: @hour_us)
    r = Replicator.set_neighbours(r, [:pause_peer], nil)

    :ok = Native.put(handle, Native.key(:first), Native.value(1))
    r = notified(r)
    assert keys_in(pushed()) == [:first]

    # within the pause: held, the timer armed once for all of them
    :ok = Native.put(handle, Native.key(:second), Native.value(2))
    r = notified(r)
    assert pushed() == []
    assert r.armed
    :ok = Native.put(handle, Native.key(:third), Native.value(3))
    send(self(), :drove_flush)
    r = notified(r)
    assert pushed() == []

    # the owner's own flush is not held back, and takes both
    {r, _} = Replicator.flush(r)
    assert keys_in(pushed()) == [:second, :third]
    assert r.stats.deltas_out == 2
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
