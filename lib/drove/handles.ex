defmodule Drove.Handles do
  @moduledoc false
  # Maps a replica process (by pid and, when named, by name) to its native handle so callers
  # read and write without a process hop. Entries live in :persistent_term (reads cost tens
  # of nanoseconds); this process monitors each owner and erases its entries when it dies,
  # however it dies.
  use GenServer

  @spec start_link(term()) :: GenServer.on_start()
  def start_link(_), do: GenServer.start_link(__MODULE__, nil, name: __MODULE__)

  @doc false
  # Through this process, so that it is ordered with the erasing of a previous owner of the
  # same name: a restarted owner registering while the DOWN of the one it replaces is being
  # handled used to lose its fresh entry (read-then-erase in between).
  @spec register(atom() | nil, pid(), reference()) :: :ok
  def register(name, pid, handle) do
    GenServer.call(__MODULE__, {:register, name, pid, handle}, :infinity)
  end

  @doc false
  @spec unregister(atom() | nil, pid()) :: :ok
  def unregister(name, pid) do
    erase(name, pid)
    :ok
  end

  @doc false
  @spec lookup(pid() | atom()) :: {pid(), reference()} | nil
  def lookup(server) when is_pid(server) or is_atom(server) do
    :persistent_term.get({__MODULE__, server}, nil)
  end

  def lookup(_), do: nil

  @impl true
  def init(nil), do: {:ok, %{}}

  @impl true
  def handle_call({:register, name, pid, handle}, _from, watched) do
    if name, do: :persistent_term.put({__MODULE__, name}, {pid, handle})
    :persistent_term.put({__MODULE__, pid}, {pid, handle})
    ref = Process.monitor(pid)
    {:reply, :ok, Map.put(watched, ref, {pid, name})}
  end

  @impl true
  def handle_info({:DOWN, ref, :process, _, _}, watched) do
    {{pid, name}, watched} = Map.pop(watched, ref)
    erase(name, pid)
    {:noreply, watched}
  end

  defp erase(name, pid) do
    # a name may have been taken over by a newer process: erase only our own entry
    if name do
      case :persistent_term.get({__MODULE__, name}, nil) do
        {^pid, _} -> :persistent_term.erase({__MODULE__, name})
        _ -> :ok
      end
    end

    :persistent_term.erase({__MODULE__, pid})
  end
end
