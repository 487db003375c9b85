defmodule Bench do
  @moduledoc false
  # Shared helpers for bench/*.exs: medians, peers, a results table.

  def median(list) do
    sorted = Enum.sort(list)
    n = length(sorted)

    if rem(n, 2) == 1,
      do: Enum.at(sorted, div(n, 2)),
      else: (Enum.at(sorted, div(n, 2) - 1) + Enum.at(sorted, div(n, 2))) / 2
  end

  def percentile(list, p) do
    sorted = Enum.sort(list)
    Enum.at(sorted, min(length(sorted) - 1, round(p / 100 * (length(sorted) - 1))))
  end

  @doc "Median of `runs` timings (us) of fun."
  def time_us(runs, fun) do
    for(_ <- 1..runs, do: elem(:timer.tc(fun), 0)) |> median()
  end

  def ensure_distributed! do
    unless Node.alive?() do
      System.cmd("epmd", ["-daemon"])

      {:ok, _} =
        :net_kernel.start([:"bench_#{System.unique_integer([:positive])}@127.0.0.1", :longnames])
    end
  end

  def start_peer(name) do
    ensure_distributed!()

    args =
      Enum.flat_map(:code.get_path(), &[~c"-pa", &1]) ++
        [~c"-setcookie", Atom.to_charlist(Node.get_cookie())] ++
        [~c"-kernel", ~c"prevent_overlapping_partitions", ~c"false"]

    {:ok, pid, node} =
      :peer.start_link(%{name: name, host: ~c"127.0.0.1", longnames: true, args: args})

    {:ok, _} = :erpc.call(node, Application, :ensure_all_started, [:drove])
    load_remote([node])
    {pid, node}
  end

  def stop_peer({pid, _node}), do: :peer.stop(pid)

  # What several benches run on their peers, compiled there by load_remote/1 (the bench
  # scripts are not on the peers' code path).
  @remote_src ~S"""
  defmodule Bench.Remote do
    # A Drove.DynamicSupervisor under the :drove application's supervisor, so that it
    # outlives the :erpc call that started it.
    def start_sup(name, members) do
      spec =
        Supervisor.child_spec(
          {Drove.DynamicSupervisor, name: name, strategy: :one_for_one, members: members},
          id: name,
          restart: :temporary
        )

      {:ok, _} = Supervisor.start_child(Drove.Supervisor, spec)
      :ok
    end

    # whether the supervisor sees n members :alive
    def sup_alive?(name, n) do
      :sys.get_state(name).members_info |> Map.values() |> Enum.count(&(&1.status == :alive)) ==
        n
    end

    # a :pg scope and a Drove.Registry, owned by a process that lives on
    def start_registry_and_pg(reg, scope, members) do
      parent = self()

      spawn(fn ->
        {:ok, _} = :pg.start_link(scope)
        {:ok, _} = Drove.Registry.start_link(name: reg, keys: :unique, members: members)
        send(parent, :ready)
        Process.sleep(:infinity)
      end)

      receive do: (:ready -> :ok)
    end

    def connect(nodes), do: Enum.all?(nodes, &Node.connect/1)
    def neighbours_up(reg), do: length(Drove.Registry.info(reg).neighbours_up)
  end
  """

  @doc "Compiles Bench.Remote on each of `nodes`."
  def load_remote(nodes) do
    for {:ok, _} <- :erpc.multicall(nodes, Code, :compile_string, [@remote_src]), do: :ok
    :ok
  end

  def row(label, value, reference, ref_label, target) do
    ratio =
      if is_number(reference) and reference != 0, do: Float.round(value / reference, 2), else: "-"

    IO.puts(
      String.pad_trailing(label, 48) <>
        String.pad_leading(fmt(value), 12) <>
        "   vs " <>
        String.pad_trailing(ref_label, 28) <>
        String.pad_leading(fmt(reference), 10) <>
        "   ratio " <> to_string(ratio) <> "   target " <> target
    )
  end

  def fmt(v) when is_float(v), do: :erlang.float_to_binary(v, decimals: 3)
  def fmt(v), do: to_string(v)

  def wait_until(fun, timeout_ms \\ 60_000) do
    deadline = System.monotonic_time(:millisecond) + timeout_ms
    wait_loop(fun, deadline)
  end

  defp wait_loop(fun, deadline) do
    cond do
      fun.() -> :ok
      System.monotonic_time(:millisecond) > deadline -> raise "bench: condition not met in time"
      # polling must not steal the CPU from what is measured
      true -> Process.sleep(2) && wait_loop(fun, deadline)
    end
  end
end
