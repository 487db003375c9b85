defmodule Drove.Application do
  @moduledoc false
  use Application

  @impl true
  def start(_type, _args) do
    children = [Drove.Handles, Drove.Replicator.Sender]
    Supervisor.start_link(children, strategy: :one_for_one, name: Drove.Supervisor)
  end
end
