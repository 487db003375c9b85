# Where the time of a local Drove.CRDT put and get goes (prebuilt binaries vs the API).
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

    _ = c
  end
end

PP.run()
