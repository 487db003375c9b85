# Placement benchmarks: Drove.Distribution.Uniform (ring built once per member list, in C)
# against a pure-Elixir reference that does what Horde.UniformDistribution + libring do on
# every call (filter, Map.new, a fresh gb_tree of 128 points per member, iterator_from), in
# the same run. Single node; no peers.  Run: make bench BENCH=bench/placement.exs
Code.require_file("bench_helper.exs", __DIR__)

defmodule PlacementBench.HordeRef do
  # Horde 0.9/0.10 UniformDistribution.choose_node with libring 1.7, written from their
  # behaviour (see the reference doc, section 5.1): the ring is rebuilt on every call.
  @range 4_294_967_295

  def choose_node(spec, members) do
    alive = members |> Enum.filter(&match?(%{status: :alive}, &1)) |> Map.new(&{&1.name, &1})

    case map_size(alive) do
      0 -> {:error, :no_alive_nodes}
      _ -> {:ok, Map.fetch!(alive, lookup(tree(Map.keys(alive)), hash(spec)))}
    end
  end

  def hash(spec), do: :erlang.phash2(:erlang.phash2(Map.drop(spec, [:id])), @range)

  def tree(names) do
    Enum.reduce(names, :gb_trees.empty(), fn name, t ->
      Enum.reduce(1..128, t, fn i, t ->
        try do
          :gb_trees.insert(:erlang.phash2({name, i}, @range), name, t)
        catch
          :error, {:key_exists, _} -> t
        end
      end)
    end)
  end

  def lookup(tree, h) do
    case :gb_trees.iterator_from(h, tree) do
      [{_, owner, _, _} | _] -> owner
      _ -> elem(:gb_trees.smallest(tree), 1)
    end
  end
end

alias Drove.Distribution.{Rendezvous, Uniform}
alias Drove.DynamicSupervisor.Member
alias PlacementBench.HordeRef

members = fn n ->
  for i <- 1..n, do: %Member{name: {:placement_sup, :"node#{i}@127.0.0.1"}, status: :alive}
end

specs = fn n ->
  for i <- 1..n,
      do: %{
        id: i,
        start: {PlacementWorker, :start_link, [[name: {:worker, i}]]},
        restart: :transient
      }
end

IO.puts("""
Placement (µs per call unless stated; medians of runs; same run, same node)
""")

calls = 2000
spec_list = specs.(calls)

per_call = fn fun, list ->
  # median over 7 runs of the mean time per call over `calls` specs
  Bench.time_us(7, fn -> Enum.each(list, fun) end) / length(list)
end

for n <- [3, 10, 50] do
  ms = members.(n)
  # warm the cache and check agreement on the way

  true =
    Enum.all?(
      Enum.take(spec_list, 200),
      &(Uniform.choose_node(&1, ms) == HordeRef.choose_node(&1, ms))
    )

  drove = per_call.(&Uniform.choose_node(&1, ms), spec_list)
  # A supervisor rebuilds its member list for each call: an equal but not identical list
  # makes the cache compare it element by element.
  copies = List.to_tuple(for _ <- 1..16, do: :erlang.binary_to_term(:erlang.term_to_binary(ms)))
  indexed = Enum.with_index(spec_list)

  fresh = per_call.(fn {s, i} -> Uniform.choose_node(s, elem(copies, rem(i, 16))) end, indexed)
  ref_list = Enum.take(spec_list, if(n == 50, do: 100, else: 500))
  horde = per_call.(&HordeRef.choose_node(&1, ms), ref_list)

  Bench.row(
    "Uniform.choose_node, #{n} members (cached ring)",
    drove,
    horde,
    "Horde-style rebuild per call",
    "-"
  )

  Bench.row(
    "Uniform.choose_node, #{n} members (equal new list)",
    fresh,
    horde,
    "Horde-style rebuild per call",
    "-"
  )

  rdv = per_call.(&Rendezvous.choose_node(&1, ms), spec_list)

  Bench.row(
    "Rendezvous.choose_node, #{n} members",
    rdv,
    horde,
    "Horde-style rebuild per call",
    "-"
  )

  names = Enum.map(ms, & &1.name)
  points = Enum.map(names, &Uniform.points/1)
  pts_us = Bench.time_us(21, fn -> Enum.map(names, &Uniform.points/1) end)
  new_us = Bench.time_us(21, fn -> Drove.Native.ring_new(points) end)
  tree_us = Bench.time_us(21, fn -> HordeRef.tree(names) end)
  Bench.row("  ring build, #{n} members: phash2 points", pts_us, tree_us, "gb_tree build", "-")
  Bench.row("  ring build, #{n} members: ring_new NIF", new_us, tree_us, "gb_tree build", "-")
  ring = Drove.Native.ring_new(points)
  hs = Enum.map(spec_list, &Uniform.hash/1)
  own = per_call.(&Drove.Native.ring_owner(ring, &1), hs)
  Bench.row("  ring_owner NIF alone, #{n} members", own, nil, "", "-")
end

IO.puts("")
batch = specs.(20_000)

for n <- [10, 50] do
  ms = members.(n)
  {:ok, _} = Uniform.choose_nodes(batch, ms)
  tree = HordeRef.tree(Enum.map(ms, & &1.name))
  by_name = Map.new(ms, &{&1.name, &1})

  once_ref = fn ->
    Enum.map(batch, &Map.fetch!(by_name, HordeRef.lookup(tree, HordeRef.hash(&1))))
  end

  {:ok, check} = Uniform.choose_nodes(batch, ms)
  ^check = once_ref.()

  b = Bench.time_us(7, fn -> Uniform.choose_nodes(batch, ms) end) / 1000
  loop = Bench.time_us(5, fn -> Enum.each(batch, &Uniform.choose_node(&1, ms)) end) / 1000
  ref = Bench.time_us(5, once_ref) / 1000
  horde_call = per_call.(&HordeRef.choose_node(&1, ms), Enum.take(batch, 100))

  Bench.row(
    "20k specs, #{n} members: Uniform.choose_nodes, ms",
    b,
    ref,
    "Elixir gb_tree built once, ms",
    "-"
  )

  Bench.row(
    "20k specs, #{n} members: choose_node loop, ms",
    loop,
    ref,
    "Elixir gb_tree built once, ms",
    "-"
  )

  Bench.row(
    "20k specs, #{n} members: Horde-style per call, ms",
    horde_call * 20,
    b,
    "(20k x median per call)",
    "-"
  )

  r = Bench.time_us(7, fn -> Rendezvous.choose_nodes(batch, ms) end) / 1000

  Bench.row(
    "20k specs, #{n} members: Rendezvous.choose_nodes, ms",
    r,
    ref,
    "Elixir gb_tree built once, ms",
    "-"
  )
end
