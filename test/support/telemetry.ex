defmodule :telemetry do
  @moduledoc false
  # A test-only stand-in for the telemetry package (which cannot be fetched here), compiled
  # only in MIX_ENV=test (test/support): the part of its API that Drove and the tests use.
  # Handlers live in a public ETS table, looked up per event and called in the emitting
  # process, as the real one does. Drove finds this module with Code.ensure_loaded?/1 exactly
  # as it finds the real one.

  @table :drove_test_telemetry_handlers

  @spec attach(term(), [atom()], function(), term()) :: :ok
  def attach(id, event, fun, config), do: attach_many(id, [event], fun, config)

  @spec attach_many(term(), [[atom()]], function(), term()) :: :ok
  def attach_many(id, events, fun, config) when is_function(fun, 4) do
    ensure_table()
    :ets.insert(@table, for(e <- events, do: {e, id, fun, config}))
    :ok
  end

  @spec detach(term()) :: :ok
  def detach(id) do
    if :ets.whereis(@table) != :undefined, do: :ets.match_delete(@table, {:_, id, :_, :_})
    :ok
  end

  @spec execute([atom()], map(), map()) :: :ok
  def execute(event, measurements, metadata) when is_map(measurements) and is_map(metadata) do
    handlers = if :ets.whereis(@table) == :undefined, do: [], else: :ets.lookup(@table, event)
    Enum.each(handlers, fn {_, _, fun, config} -> fun.(event, measurements, metadata, config) end)
  end

  # The table outlives whoever attached first: a process of its own keeps it.
  defp ensure_table do
    if :ets.whereis(@table) == :undefined do
      {pid, mref} = spawn_monitor(&hold_table/0)
      send(pid, {:created?, self()})

      receive do
        {:table, ^pid} -> :ok
        {:DOWN, ^mref, :process, ^pid, _} -> :ok
      end

      Process.demonitor(mref, [:flush])
    end

    :ok
  end

  defp hold_table do
    :ets.new(@table, [:named_table, :public, :duplicate_bag, read_concurrency: true])

    receive do
      {:created?, from} -> send(from, {:table, self()})
    end

    receive do: (:never -> :ok)
  rescue
    # another process made it first
    ArgumentError -> :ok
  end
end

defmodule Drove.Test.Telemetry do
  @moduledoc false
  # Test helpers over the stand-in above; they run on peer nodes too.

  @doc """
  Attaches a handler that sends `{:telemetry, event, measurements, metadata}` to `pid` (the
  caller by default) for each of `events`. Returns the handler id.
  """
  @spec forward([[atom()]], pid()) :: reference()
  def forward(events, pid \\ self()) do
    id = make_ref()
    :ok = :telemetry.attach_many(id, events, &__MODULE__.send_event/4, pid)
    id
  end

  @doc false
  @spec send_event([atom()], map(), map(), pid()) :: :ok
  def send_event(event, measurements, metadata, pid) do
    send(pid, {:telemetry, event, measurements, metadata})
    :ok
  end
end
