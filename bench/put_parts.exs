# Where the time of a local Drove.CRDT put and get goes (prebuilt binaries vs the API), and
# what decoding and joining a supervisor entry (a value holding a pid) costs.
# Run: make bench BENCH=bench/put_parts.exs
defmodule PP do
  def t(label, n, f) do
    {us, _} = :timer.tc(fn -> f.(n) end)
    IO.puts("#{label}: #{Float.round(us / n * 1000)} ns")
  end

  def run do
    n = 200_000
    {:ok, c} = Drove.CRDT.start_link(name: :pp)
    {_, h} = Drove.Handles.lookup(:pp)
    keys = for i <- 1..n, do: Drove.Native.key(i)
    val = Drove.Native.value({:v, 1})
    tab = :ets.new(:x, [:set, :public])

    for _ <- 1..2 do
      t("ets insert", n, fn n -> Enum.each(1..n, &:ets.insert(tab, {&1, {:v, &1}})) end)
      t("Native.put prebuilt", n, fn _ -> Enum.each(keys, &Drove.Native.put(h, &1, val)) end)

      t("t2b key+value", n, fn n ->
        Enum.each(1..n, &{Drove.Native.key(&1), Drove.Native.value({:v, &1})})
      end)

      t("CRDT.put", n, fn n -> Enum.each(1..n, &Drove.CRDT.put(:pp, &1, {:v, &1})) end)
      t("Native.get prebuilt", n, fn _ -> Enum.each(keys, &Drove.Native.get(h, &1)) end)
      t("CRDT.get", n, fn n -> Enum.each(1..n, &Drove.CRDT.get(:pp, &1)) end)
      t("ets lookup", n, fn n -> Enum.each(1..n, &:ets.lookup(tab, &1)) end)
    end

    # A supervisor entry's value ({owner, spec, pid}): decoded on every join, read and diff.
    # A read of one (the replica's lookup and decoder) against binary_to_term of the value's
    # bytes alone, and the join of one-entry deltas (a push of one start) into a replica that
    # has none of them.
    spec = %{id: 1, start: {PP.Worker, :start_link, [1]}, restart: :permanent, type: :worker}
    value = Drove.Native.value({{:pp_sup, node()}, spec, self()})
    m = div(n, 4)
    src = Drove.Native.replica_new(1, self(), false)

    deltas =
      for i <- 1..m do
        {:ok, d} = Drove.Native.put_new_delta(src, Drove.Native.key({:child, i}), value)
        d
      end

    keys_m = for i <- 1..m, do: Drove.Native.key({:child, i})

    for _ <- 1..2 do
      t("entry: Native.get (lookup + decode)", m, fn _ ->
        Enum.each(keys_m, &Drove.Native.get(src, &1))
      end)

      t("entry value: binary_to_term", m, fn m ->
        repeat(m, fn -> :erlang.binary_to_term(value) end)
      end)

      dst = Drove.Native.replica_new(2, self(), false)

      t("join of a one-entry delta", m, fn _ ->
        Enum.each(deltas, &Drove.Native.join(dst, &1, true))
      end)
    end

    _ = c
  end

  defp repeat(0, _f), do: :ok

  defp repeat(n, f) do
    f.()
    repeat(n - 1, f)
  end
end

PP.run()
