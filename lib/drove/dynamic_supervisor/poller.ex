defmodule Drove.DynamicSupervisor.Poller do
  @moduledoc false
  # Part of an instance's tree, started only when :telemetry is loaded: every @period ms it
  # sends [:drove, :supervisor, :children] with the instance's child counts, and with the
  # :horde_telemetry flag (compat/horde) Horde's [:horde, :supervisor,
  # :supervised_process_count] as well, with Horde's measurement names. It never crashes (the
  # tree is :one_for_all with no restarts): a poll the instance does not answer in time is
  # skipped.
  use GenServer

  @period 5_000

  @spec start_link(atom(), boolean()) :: GenServer.on_start()
  def start_link(sup, horde?) do
    if Drove.Telemetry.handler(),
      do: GenServer.start_link(__MODULE__, {sup, horde?}),
      else: :ignore
  end

  @doc false
  # One poll, now: what every tick sends.
  @spec poll(atom(), boolean()) :: :ok
  def poll(sup, horde?) do
    %{children: global, local_children: local} = Drove.Cluster.info(sup)
    meta = %{supervisor: sup}
    Drove.Telemetry.execute([:drove, :supervisor, :children], counts(global, local), meta)

    if horde? do
      Drove.Telemetry.execute(
        [:horde, :supervisor, :supervised_process_count],
        %{global_supervised_process_count: global, local_supervised_process_count: local},
        %{name: sup}
      )

      # Horde's poller also reports its instance's message queue
      with pid when is_pid(pid) <- Process.whereis(sup),
           {:message_queue_len, n} <- Process.info(pid, :message_queue_len) do
        Drove.Telemetry.execute([:horde, :supervisor], %{message_queue_len: n}, %{name: sup})
      end
    end

    :ok
  catch
    :exit, _ -> :ok
  end

  defp counts(global, local), do: %{children: global, local_children: local}

  @impl true
  def init(state) do
    Process.send_after(self(), :poll, @period)
    {:ok, state}
  end

  @impl true
  def handle_info(:poll, {sup, horde?} = state) do
    poll(sup, horde?)
    Process.send_after(self(), :poll, @period)
    {:noreply, state}
  end

  def handle_info(_other, state), do: {:noreply, state}
end
