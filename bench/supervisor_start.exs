# The start path of Drove.DynamicSupervisor on 3 loopback peers, against references in the same
# run (issue 16):
#   1. one caller in sequence: per child, against the floor of a plain OTP DynamicSupervisor on
#      each node with the child started on the node :erlang.phash2 picks (one remote call,
#      nothing replicated); also the median start, apart for the children placed on the
#      caller's node (Drove waits for a peer's acknowledgement) and elsewhere;
#   2. 16 callers at once: children per second, against a local OTP DynamicSupervisor with 16
#      callers (the issue's target), and against the floor of 1. with the same 16 callers (what
#      the remote calls alone allow, nothing replicated).
# Medians of 3 rounds, each with fresh supervisors. Run: make bench BENCH=bench/supervisor_start.exs
Code.require_file("bench_helper.exs", __DIR__)

remote_src = ~S"""
defmodule StartBench.Worker do
  use GenServer
  def start_link(arg), do: GenServer.start_link(__MODULE__, arg)
  @impl true
  def init(arg), do: {:ok, arg}
end

defmodule StartBench.Remote do
  def start_sups(drove, plain, members) do
    :ok = Bench.Remote.start_sup(drove, members)

    plain_spec =
      Supervisor.child_spec({DynamicSupervisor, name: plain, strategy: :one_for_one},
        id: plain, restart: :temporary)

    {:ok, _} = Supervisor.start_child(Drove.Supervisor, plain_spec)
    :ok
  end

  def stop_sups(drove, plain) do
    # a temporary child that exited is gone already
    for id <- [drove, plain] do
      _ = Supervisor.terminate_child(Drove.Supervisor, id)
      _ = Supervisor.delete_child(Drove.Supervisor, id)
    end
    :ok
  end

  defp spec(i), do: %{id: i, start: {StartBench.Worker, :start_link, [i]}}

  # one caller, n children in sequence: us per child, and the median of a start whose child
  # was placed on the caller's node and of one placed elsewhere
  def seq(:drove, name, _nodes, n) do
    timed(n, fn i -> Drove.DynamicSupervisor.start_child(name, spec(i)) end)
  end

  def seq(:floor, name, nodes, n) do
    k = length(nodes)
    timed(n, fn i -> DynamicSupervisor.start_child({name, Enum.at(nodes, :erlang.phash2(i, k))}, spec(i)) end)
  end

  defp timed(n, start) do
    {us, each} = :timer.tc(fn ->
      for i <- 1..n do
        {t, {:ok, pid}} = :timer.tc(fn -> start.(i) end)
        {node(pid) == node(), t}
      end
    end)
    here = for {true, t} <- each, do: t
    elsewhere = for {false, t} <- each, do: t
    {us / n, median(here), median(elsewhere)}
  end

  defp median(ts), do: Enum.at(Enum.sort(ts), div(length(ts), 2))

  # c callers at once, n children in all: children per second
  def par(kind, name, c, n) do
    per = div(n, c)
    {us, _} = :timer.tc(fn ->
      1..c
      |> Enum.map(fn j ->
        Task.async(fn ->
          for i <- 1..per do
            start(kind, name, spec({j, i}))
          end
        end)
      end)
      |> Enum.each(&Task.await(&1, :infinity))
    end)
    per * c / (us / 1_000_000)
  end

  defp start(:drove, name, spec), do: {:ok, _} = Drove.DynamicSupervisor.start_child(name, spec)
  defp start(:local, name, spec), do: {:ok, _} = DynamicSupervisor.start_child(name, spec)

  defp start({:floor, nodes}, name, spec) do
    node = Enum.at(nodes, :erlang.phash2(spec.id, length(nodes)))
    {:ok, _} = DynamicSupervisor.start_child({name, node}, spec)
  end
end
"""

Bench.ensure_distributed!()
IO.puts("== Drove.DynamicSupervisor start path (3 peers, medians of 3 rounds; 2 vCPU) ==")

peers = for i <- 1..3, do: Bench.start_peer(:"sstart#{i}_#{System.unique_integer([:positive])}")
nodes = [a | _] = Enum.map(peers, &elem(&1, 1))
Enum.each(nodes, &:erpc.call(&1, Code, :compile_string, [remote_src]))
r = StartBench.Remote
n = String.to_integer(System.get_env("N", "6000"))

# CPU time (user + system) of each peer's OS process, in us, from /proc: where a start's work
# goes, node by node (nil where /proc is not there)
os_pids = Enum.map(nodes, &:erpc.call(&1, :os, :getpid, []))

cpu_us = fn ->
  Enum.map(os_pids, fn pid ->
    case File.read("/proc/#{pid}/stat") do
      {:ok, stat} ->
        # fields after the command name; utime and stime are the 14th and 15th of the line
        [_, rest] = String.split(stat, ") ", parts: 2)
        fields = String.split(rest)
        ticks = String.to_integer(Enum.at(fields, 11)) + String.to_integer(Enum.at(fields, 12))
        # clock ticks of 10 ms (USER_HZ 100, as on Linux on x86 and arm)
        ticks * 10_000

      {:error, _} ->
        nil
    end
  end)
end

# runs `fun` (c callers, n children); returns its rate and the CPU us per child on each peer
with_cpu = fn fun ->
  before = cpu_us.()
  rate = fun.()
  per = Enum.zip_with(before, cpu_us.(), fn b, a -> b && (a - b) / n end)
  {rate, per}
end

rounds =
  for round <- 1..3 do
    drove = :"sbench_#{round}"
    plain = :"splain_#{round}"
    members = for node <- nodes, do: {drove, node}
    Enum.each(nodes, &(:ok = :erpc.call(&1, r, :start_sups, [drove, plain, members])))

    Bench.wait_until(fn ->
      Enum.all?(nodes, &:erpc.call(&1, Bench.Remote, :sup_alive?, [drove, 3]))
    end)

    {floor, floor_here, floor_there} =
      :erpc.call(a, r, :seq, [:floor, plain, nodes, n], :infinity)

    {seq, here, there} = :erpc.call(a, r, :seq, [:drove, drove, nodes, n], :infinity)

    {par, par_cpu} =
      with_cpu.(fn -> :erpc.call(a, r, :par, [:drove, drove, 16, n], :infinity) end)

    local = :erpc.call(a, r, :par, [:local, plain, 16, n], :infinity)

    {pfloor, pfloor_cpu} =
      with_cpu.(fn -> :erpc.call(a, r, :par, [{:floor, nodes}, plain, 16, n], :infinity) end)

    Enum.each(nodes, &(:ok = :erpc.call(&1, r, :stop_sups, [drove, plain], :infinity)))

    IO.puts(
      "round #{round}: floor #{Float.round(floor, 1)} us, Drove #{Float.round(seq, 1)} us per child; " <>
        "16 callers: Drove #{round(par)}/s, local #{round(local)}/s, floor #{round(pfloor)}/s"
    )

    %{
      floor: floor,
      seq: seq,
      floor_here: floor_here,
      floor_there: floor_there,
      here: here,
      there: there,
      par: par,
      local: local,
      pfloor: pfloor,
      par_cpu: par_cpu,
      pfloor_cpu: pfloor_cpu
    }
  end

med = fn k -> Bench.median(Enum.map(rounds, & &1[k])) end

Bench.row(
  "one caller: us per child",
  med.(:seq),
  med.(:floor),
  "floor (phash2 + plain DS)",
  "<= 2x (>= 0.5x speed)"
)

Bench.row(
  "one caller, placed on its node: median us",
  med.(:here),
  med.(:floor_here),
  "floor, same placement",
  "(context: needs a peer's ack)"
)

Bench.row(
  "one caller, placed elsewhere: median us",
  med.(:there),
  med.(:floor_there),
  "floor, same placement",
  "(context: one remote call)"
)

Bench.row(
  "16 callers: children/s",
  med.(:par),
  med.(:local),
  "local DynamicSupervisor",
  ">= 0.3x"
)

Bench.row(
  "16 callers: children/s",
  med.(:par),
  med.(:pfloor),
  "floor, 16 callers",
  "(context: the bare remote calls)"
)

# CPU per child on each peer (the callers run on the first), medians over the rounds
cpu_row = fn key ->
  rounds
  |> Enum.map(& &1[key])
  |> Enum.zip_with(& &1)
  |> Enum.map(fn per -> if Enum.all?(per), do: Float.round(Bench.median(per), 1) end)
end

IO.puts(
  "16 callers, CPU us per child on the peers (callers' node first): Drove " <>
    "#{inspect(cpu_row.(:par_cpu))}, floor #{inspect(cpu_row.(:pfloor_cpu))}"
)

Enum.each(peers, &Bench.stop_peer/1)
