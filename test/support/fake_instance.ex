defmodule Drove.Test.FakeInstance do
  @moduledoc false
  # A stand-in for a Drove instance (registry, dynamic supervisor): implements the
  # Drove.Cluster contract ({:set_members, list} -> :ok, :members -> list) and records every
  # set_members call. Like Horde's instances it starts with itself as the only member.
  # The helpers below run ON peer nodes (test modules are not loaded there).

  use GenServer

  @doc "Starts an unlinked instance registered as `name` (it outlives the RPC that starts it)."
  @spec start(atom()) :: {:ok, pid()}
  def start(name) when is_atom(name), do: GenServer.start(__MODULE__, name, name: name)

  @doc "Starts one instance per name; returns their pids."
  @spec start_all([atom()]) :: [pid()]
  def start_all(names), do: for(n <- names, do: elem(start(n), 1))

  @doc "The instance's members, sorted."
  @spec members(atom()) :: [{atom(), node()}]
  def members(name), do: name |> Drove.Cluster.members() |> Enum.sort()

  @doc "The nodes of the instance's members, sorted."
  @spec member_nodes(atom()) :: [node()]
  def member_nodes(name), do: for({_, n} <- members(name), do: n)

  @doc "Every set_members call the instance received, oldest first."
  @spec calls(atom()) :: [[{atom(), node()}]]
  def calls(name), do: GenServer.call(name, :calls)

  @doc "Kills the instance (as a crash would) and waits until its name is free."
  @spec kill(atom()) :: :ok
  def kill(name) do
    pid = Process.whereis(name)
    ref = Process.monitor(pid)
    Process.exit(pid, :kill)

    receive do
      {:DOWN, ^ref, :process, ^pid, _} -> :ok
    end
  end

  @doc """
  Starts a Drove.Membership under the :drove application's supervisor, so that it is
  stopped gracefully (terminate/2 runs) when the node stops with :init.stop/0.
  """
  @spec start_membership(keyword()) :: {:ok, pid()}
  def start_membership(opts) do
    spec = Supervisor.child_spec({Drove.Membership, opts}, id: {:membership, opts[:name]})
    Supervisor.start_child(Drove.Supervisor, spec)
  end

  @doc "Stops a Membership started with start_membership/1 (graceful, like a shutdown)."
  @spec stop_membership(atom()) :: :ok
  def stop_membership(name) do
    :ok = Supervisor.terminate_child(Drove.Supervisor, {:membership, name})
    Supervisor.delete_child(Drove.Supervisor, {:membership, name})
  end

  # ---------------------------------------------------------------------------

  @impl true
  def init(name), do: {:ok, %{members: [{name, node()}], calls: []}}

  @impl true
  def handle_call({:set_members, members}, _from, state) do
    {:reply, :ok, %{state | members: members, calls: [members | state.calls]}}
  end

  def handle_call(:members, _from, state), do: {:reply, state.members, state}
  def handle_call(:calls, _from, state), do: {:reply, Enum.reverse(state.calls), state}
end
