# What Drove's telemetry calls add to the replication hot path: the calls made for every
# delta joined (Drove.Telemetry.now/0 and join/5), against the NIF join of a one-entry delta
# (the cheapest message they go with), without :telemetry and then with a :telemetry module
# that does nothing (what is left is Drove's side: the check and the measurements map).
# Medians of 7 runs of 100k calls, in ns per call.
# Run: make bench BENCH=bench/telemetry.exs
Code.require_file("bench_helper.exs", __DIR__)

defmodule TelemetryBench do
  alias Drove.Native

  @n 100_000

  def ns(fun) do
    Bench.median(
      for _ <- 1..7 do
        {us, _} = :timer.tc(fn -> loop(@n, fun) end)
        us * 1000 / @n
      end
    )
  end

  defp loop(0, _fun), do: :ok

  defp loop(n, fun) do
    fun.()
    loop(n - 1, fun)
  end

  def run do
    a = Native.replica_new(1, self(), false)
    b = Native.replica_new(2, self(), false)
    :ok = Native.put(a, Native.key({:user, 42}), Native.value(%{name: "Ada"}))
    {[delta], _} = Native.take_outbox(a, 1_048_576)
    from = self()
    join = fn -> Native.join(b, delta, false) end

    calls = fn ->
      t0 = Drove.Telemetry.now()
      Drove.Telemetry.join(:bench, from, delta, 1, t0)
    end

    nil = Drove.Telemetry.detect()
    ref = ns(join)
    off = ns(calls)

    Code.eval_string("""
    defmodule :telemetry do
      def execute(_event, _measurements, _metadata), do: :ok
    end
    """)

    :telemetry = Drove.Telemetry.detect()
    on = ns(calls)
    ref2 = ns(join)

    IO.puts(
      "join of a one-entry delta (reference): #{Bench.fmt(ref)} ns, again #{Bench.fmt(ref2)} ns"
    )

    Bench.row("telemetry calls per join, no :telemetry (ns)", off, ref, "join (ns)", "< 0.1")
    Bench.row("telemetry calls per join, no-op :telemetry (ns)", on, ref, "join (ns)", "-")
  end
end

TelemetryBench.run()
