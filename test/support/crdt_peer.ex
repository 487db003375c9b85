defmodule Drove.Test.CRDTPeer do
  @moduledoc false
  # Helpers that run ON peer nodes (test modules are not loaded there; this support module
  # is compiled into _build/test and so is on every peer's code path).

  @doc "Starts a named replica that outlives the RPC call; diffs are recorded in ETS."
  @spec start(atom(), list(), keyword()) :: {:ok, pid()}
  def start(name, neighbours, opts \\ []) do
    table = diffs_table(name)

    opts = [name: name, neighbours: neighbours, on_diffs: {__MODULE__, :record, [table]}] ++ opts

    {:ok, pid} = GenServer.start(Drove.CRDT, validate(opts), name: name)
    {:ok, pid}
  end

  defp validate(opts), do: opts

  @doc """
  Starts a named replica under a supervisor (restarted when killed), held by a long-lived
  process (not the RPC's). Returns the supervisor's pid.
  """
  @spec start_supervised(atom(), list(), keyword()) :: pid()
  def start_supervised(name, neighbours, opts \\ []) do
    table = diffs_table(name)
    opts = [name: name, neighbours: neighbours, on_diffs: {__MODULE__, :record, [table]}] ++ opts
    parent = self()

    spawn(fn ->
      {:ok, sup} = Supervisor.start_link([{Drove.CRDT, opts}], strategy: :one_for_one)
      send(parent, {:supervisor, sup})
      Process.sleep(:infinity)
    end)

    receive do
      {:supervisor, sup} -> sup
    after
      10_000 -> raise "replica #{inspect(name)} did not start"
    end
  end

  @doc "The size of the replica read through its handle (works while the process is suspended)."
  @spec native_size(atom()) :: non_neg_integer()
  def native_size(name) do
    {_, h} = Drove.Handles.lookup(name)
    Drove.Native.info(h).size
  end

  @doc "Message queue length and memory (bytes) of a local process, by name."
  @spec load(atom()) :: %{queue: non_neg_integer(), memory: non_neg_integer()}
  def load(name) do
    [message_queue_len: q, memory: m] =
      Process.info(Process.whereis(name), [:message_queue_len, :memory])

    %{queue: q, memory: m}
  end

  @doc false
  @spec record(atom(), list()) :: :ok
  def record(table, diffs) do
    Enum.each(diffs, &:ets.insert(table, {System.unique_integer([:monotonic]), &1}))
  end

  @doc "Diffs recorded on this node for the replica, in order."
  @spec diffs(atom()) :: list()
  def diffs(name) do
    name |> diffs_table() |> :ets.tab2list() |> Enum.sort() |> Enum.map(&elem(&1, 1))
  end

  defp diffs_table(name) do
    table = :"#{name}_diffs"

    if :ets.whereis(table) == :undefined do
      # owned by a process that lives as long as the node
      parent = self()

      spawn(fn ->
        :ets.new(table, [:named_table, :public, :ordered_set])
        send(parent, :table_ready)
        Process.sleep(:infinity)
      end)

      receive do
        :table_ready -> :ok
      end
    end

    table
  end

  @doc "Writes `prefix`-keys for every integer of the range."
  @spec put_range(atom(), term(), Range.t()) :: :ok
  def put_range(name, prefix, range) do
    Enum.each(range, fn i -> Drove.CRDT.put(name, {prefix, i}, i) end)
  end

  @doc "Deletes `prefix`-keys for every integer of the range."
  @spec delete_range(atom(), term(), Range.t()) :: :ok
  def delete_range(name, prefix, range) do
    Enum.each(range, fn i -> Drove.CRDT.delete(name, {prefix, i}) end)
  end

  @spec size(atom()) :: non_neg_integer()
  def size(name), do: Drove.CRDT.info(name).size

  @spec digest(atom()) :: binary()
  def digest(name) do
    {_, h} = Drove.Handles.lookup(name)
    {Drove.Native.digest(h), Drove.Native.ctx(h)}
  end
end
