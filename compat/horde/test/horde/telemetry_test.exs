defmodule Horde.TelemetryTest do
  # Horde's telemetry events, through the main suite's test-only :telemetry stand-in.
  use ExUnit.Case, async: false

  alias Horde.DynamicSupervisor, as: HDS

  test "a Horde.DynamicSupervisor reports its process counts as Horde does" do
    id =
      Drove.Test.Telemetry.forward([
        [:horde, :supervisor, :supervised_process_count],
        [:horde, :supervisor]
      ])

    on_exit(fn -> :telemetry.detach(id) end)
    start_supervised!({HDS, name: :telemetry_hds, strategy: :one_for_one})
    {:ok, _} = HDS.start_child(:telemetry_hds, {Agent, fn -> 1 end})
    {:ok, _} = HDS.start_child(:telemetry_hds, {Agent, fn -> 2 end})

    # the poller of the instance's tree (a tick every 5 s, as Horde's; this one is now)
    [poller] =
      for {Drove.DynamicSupervisor.Poller, pid, _, _} <-
            Supervisor.which_children(:"telemetry_hds.Supervisor"),
          do: pid

    send(poller, :poll)

    assert_receive {:telemetry, [:horde, :supervisor, :supervised_process_count],
                    %{global_supervised_process_count: 2, local_supervised_process_count: 2},
                    %{name: :telemetry_hds}},
                   5_000

    assert_receive {:telemetry, [:horde, :supervisor], %{message_queue_len: n},
                    %{name: :telemetry_hds}}

    assert is_integer(n)
  end
end
