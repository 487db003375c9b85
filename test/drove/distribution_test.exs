defmodule Drove.DistributionTest do
  # Placement strategies, on one node. Uniform is checked against an independent pure-Elixir
  # model of Horde 0.9/0.10 + libring 1.7 (gb_trees, an existing point wins, first point >= the
  # hash with wrap-around), over random specs and member sets of up to 70 members (above 32 a
  # map's key order is its HAMT order, not term order).
  use ExUnit.Case, async: true

  import Bitwise

  alias Drove.Distribution.{Cache, Rendezvous, Uniform, UniformQuorum, UniformRandom}
  alias Drove.DistributionStrategy
  alias Drove.DynamicSupervisor.Member
  alias Drove.Native

  @range 4_294_967_295
  @statuses [:alive, :alive, :alive, :uninitialized, :shutting_down, :dead]

  # ---- the model ----

  defp model_tree(names) do
    Enum.reduce(names, :gb_trees.empty(), fn name, tree ->
      Enum.reduce(1..128, tree, fn i, tree ->
        p = :erlang.phash2({name, i}, @range)
        if :gb_trees.is_defined(p, tree), do: tree, else: :gb_trees.insert(p, name, tree)
      end)
    end)
  end

  defp model_lookup(tree, h) do
    case :gb_trees.next(:gb_trees.iterator_from(h, tree)) do
      {_point, owner, _} -> owner
      :none -> elem(:gb_trees.smallest(tree), 1)
    end
  end

  # Horde's choose_node over many specs (the ring built once; Horde rebuilds it per call).
  defp model_choose_all(specs, members) do
    alive = members |> Enum.filter(&match?(%{status: :alive}, &1)) |> Map.new(&{&1.name, &1})

    if map_size(alive) == 0 do
      Enum.map(specs, fn _ -> {:error, :no_alive_nodes} end)
    else
      tree = model_tree(Map.keys(alive))

      Enum.map(specs, fn spec ->
        h = :erlang.phash2(:erlang.phash2(Map.drop(spec, [:id])), @range)
        {:ok, Map.fetch!(alive, model_lookup(tree, h))}
      end)
    end
  end

  # ---- generators ----

  defp member(sup, node, status),
    do: %Member{name: {:"sup#{sup}", :"node#{node}@127.0.0.1"}, status: status}

  defp random_members(n) do
    for _ <- 1..n//1,
        do: member(:rand.uniform(3), :rand.uniform(100), Enum.random(@statuses))
  end

  defp alive_members(n, offset \\ 0), do: for(i <- 1..n, do: member(1, offset + i, :alive))

  defp random_spec do
    base = %{
      id: :rand.uniform(1 <<< 64),
      start: {Enum.random([Worker, Other]), :start_link, [:rand.uniform(1_000_000)]}
    }

    Enum.reduce([restart: :transient, shutdown: 5000, type: :worker], base, fn {k, v}, acc ->
      if :rand.uniform(2) == 1, do: Map.put(acc, k, v), else: acc
    end)
  end

  setup do
    :rand.seed(:exsss, {1, 2, ExUnit.configuration()[:seed] || 3})
    :ok
  end

  # ---- Uniform ----

  test "Uniform chooses what Horde's ring chooses, over random specs and member sets" do
    for n <- [0, 1, 2, 3, 5, 10, 20, 32, 33, 40, 70], _round <- 1..4 do
      members = random_members(n)
      specs = for _ <- 1..50, do: random_spec()

      expected = model_choose_all(specs, members)

      for {spec, want} <- Enum.zip(specs, expected) do
        assert Uniform.choose_node(spec, members) == want, "n=#{n} spec=#{inspect(spec)}"
      end

      case Uniform.choose_nodes(specs, members) do
        {:ok, chosen} ->
          assert Enum.map(chosen, &{:ok, &1}) == expected

        {:error, :no_alive_nodes} ->
          assert Enum.all?(expected, &(&1 == {:error, :no_alive_nodes}))
      end
    end
  end

  test "Uniform over more than 32 alive members (HAMT key order)" do
    members = Enum.shuffle(alive_members(60))
    # HAMT order differs from term order here, so a sorted-order ring would disagree
    assert Map.keys(Map.new(members, &{&1.name, &1})) != Enum.sort(Enum.map(members, & &1.name))

    specs = for _ <- 1..300, do: random_spec()
    assert Enum.map(specs, &Uniform.choose_node(&1, members)) == model_choose_all(specs, members)
  end

  test "Uniform: only alive members, duplicates collapse, no alive is an error" do
    members = [
      member(1, 1, :dead),
      member(1, 2, :alive),
      member(1, 2, :alive),
      member(1, 3, :shutting_down),
      member(1, 4, :uninitialized)
    ]

    for _ <- 1..100 do
      assert {:ok, %Member{name: {:sup1, :"node2@127.0.0.1"}, status: :alive}} =
               Uniform.choose_node(random_spec(), members)
    end

    dead = Enum.map(members, &%{&1 | status: :dead})
    assert Uniform.choose_node(random_spec(), dead) == {:error, :no_alive_nodes}
    assert Uniform.choose_node(random_spec(), []) == {:error, :no_alive_nodes}
    assert Uniform.choose_nodes([random_spec()], []) == {:error, :no_alive_nodes}
    assert Uniform.has_quorum?([])
  end

  test "Uniform: the spec's :id does not matter, every other key does" do
    members = alive_members(10)
    spec = random_spec()
    assert Uniform.hash(spec) == Uniform.hash(%{spec | id: :other})
    assert Uniform.choose_node(spec, members) == Uniform.choose_node(%{spec | id: 1}, members)
    assert Uniform.hash(spec) != Uniform.hash(Map.put(spec, :modules, [Worker]))
  end

  test "Uniform caches one ring per member list, in a bounded cache" do
    Cache.clear()
    members = alive_members(5)
    Uniform.choose_node(random_spec(), members)
    Uniform.choose_node(random_spec(), members)
    assert Cache.size() == 1
    for n <- 1..20, do: Uniform.choose_node(random_spec(), alive_members(n))
    assert Cache.size() <= 8
  end

  test "ring NIF: collisions go to the member given first, as in the gb_tree model" do
    for _ <- 1..200 do
      # small point range: many collisions between and within members
      lists =
        for _ <- 1..:rand.uniform(6), do: for(_ <- 1..:rand.uniform(10), do: :rand.uniform(60))

      names = Enum.to_list(0..(length(lists) - 1))

      tree =
        Enum.zip(names, lists)
        |> Enum.reduce(:gb_trees.empty(), fn {m, ps}, t ->
          Enum.reduce(ps, t, fn p, t ->
            if :gb_trees.is_defined(p, t), do: t, else: :gb_trees.insert(p, m, t)
          end)
        end)

      ring = Native.ring_new(lists)
      assert Native.ring_info(ring) == {length(lists), :gb_trees.size(tree)}
      hashes = Enum.to_list(0..70) ++ [@range]
      assert Native.ring_owners(ring, hashes) == Enum.map(hashes, &model_lookup(tree, &1))
      assert Enum.map(hashes, &Native.ring_owner(ring, &1)) == Native.ring_owners(ring, hashes)
    end
  end

  test "ring NIF: batches above the dirty threshold equal per-item lookups" do
    ring = Native.ring_new(Enum.map(1..10, &Uniform.points/1))
    hashes = for _ <- 1..20_000, do: :rand.uniform(@range + 1) - 1
    assert Native.ring_owners(ring, hashes) == Enum.map(hashes, &Native.ring_owner(ring, &1))
    assert Native.ring_owners(ring, []) == []
  end

  test "NIFs raise ArgumentError on wrong arguments" do
    ring = Native.ring_new([[1, 2, 3]])

    bad = [
      fn -> Native.ring_new([]) end,
      fn -> Native.ring_new([[]]) end,
      fn -> Native.ring_new(:x) end,
      fn -> Native.ring_new([[1 | 2]]) end,
      fn -> Native.ring_new([[-1]]) end,
      fn -> Native.ring_new([[4_294_967_296]]) end,
      fn -> Native.ring_new([[1.0]]) end,
      fn -> Native.ring_new([[1], :a]) end,
      fn -> Native.ring_new([Enum.to_list(1..4097)]) end,
      fn -> Native.ring_owner(ring, -1) end,
      fn -> Native.ring_owner(ring, 4_294_967_296) end,
      fn -> Native.ring_owner(make_ref(), 1) end,
      fn -> Native.ring_owner(ring, :a) end,
      fn -> Native.ring_owners(ring, [1, :a]) end,
      fn -> Native.ring_owners(ring, 1) end,
      fn -> Native.ring_info(:ring) end,
      fn -> Native.rendezvous_owner([], "k") end,
      fn -> Native.rendezvous_owner(["a", :b], "k") end,
      fn -> Native.rendezvous_owner(["a"], :k) end,
      fn -> Native.rendezvous_owners(["a"], ["k", 1]) end,
      fn -> Native.rendezvous_owners([], ["k"]) end
    ]

    for f <- bad, do: assert_raise(ArgumentError, f)
  end

  # ---- UniformQuorum ----

  defp q(list), do: Enum.map(list, fn {n, s} -> member(1, n, s) end)

  test "UniformQuorum: Horde's quorum rule" do
    refute UniformQuorum.has_quorum?([])
    assert UniformQuorum.has_quorum?(q([{1, :alive}]))
    refute UniformQuorum.has_quorum?(q([{1, :dead}]))
    # even count: the smallest name is dropped
    refute UniformQuorum.has_quorum?(q([{1, :alive}, {2, :dead}]))
    assert UniformQuorum.has_quorum?(q([{1, :dead}, {2, :alive}]))
    assert UniformQuorum.has_quorum?(q([{2, :alive}, {1, :dead}]))
    refute UniformQuorum.has_quorum?(q([{1, :alive}, {2, :alive}, {3, :dead}, {4, :dead}]))
    assert UniformQuorum.has_quorum?(q([{1, :dead}, {2, :alive}, {3, :alive}, {4, :dead}]))
    # shutting_down members do not count at all
    assert UniformQuorum.has_quorum?(q([{1, :alive}, {2, :shutting_down}, {3, :alive}]))

    assert UniformQuorum.has_quorum?(
             q([{1, :shutting_down}, {2, :alive}, {3, :alive}, {4, :dead}])
           )

    # uninitialized and dead members are in the denominator
    refute UniformQuorum.has_quorum?(q([{1, :alive}, {2, :uninitialized}, {3, :uninitialized}]))
    refute UniformQuorum.has_quorum?(q([{1, :alive}, {2, :dead}, {3, :uninitialized}]))
    assert UniformQuorum.has_quorum?(q([{1, :alive}, {2, :alive}, {3, :uninitialized}]))
    # all shutting down: no quorum (Horde returns nil)
    refute UniformQuorum.has_quorum?(q([{1, :shutting_down}, {2, :shutting_down}]))
  end

  test "UniformQuorum: exactly one side of a partition has quorum" do
    for _ <- 1..300 do
      n = :rand.uniform(9)
      names = Enum.to_list(1..n)
      side = Map.new(names, &{&1, Enum.random([:a, :b, :shutting_down])})
      view = fn me -> q(Enum.map(names, &{&1, status_from(side[&1], me)})) end
      a = UniformQuorum.has_quorum?(view.(:a))
      b = UniformQuorum.has_quorum?(view.(:b))

      if Enum.all?(names, &(side[&1] == :shutting_down)),
        do: refute(a or b),
        else: assert(a != b, inspect(side))
    end
  end

  defp status_from(:shutting_down, _), do: :shutting_down
  defp status_from(me, me), do: :alive
  defp status_from(_, _), do: :dead

  test "UniformQuorum places like Uniform with quorum, else :quorum_not_met" do
    members = q([{1, :alive}, {2, :alive}, {3, :dead}])
    spec = random_spec()
    assert UniformQuorum.choose_node(spec, members) == Uniform.choose_node(spec, members)
    assert UniformQuorum.choose_nodes([spec], members) == Uniform.choose_nodes([spec], members)
    lost = q([{1, :alive}, {2, :dead}, {3, :dead}])
    assert UniformQuorum.choose_node(spec, lost) == {:error, :quorum_not_met}
    assert UniformQuorum.choose_nodes([spec], lost) == {:error, :quorum_not_met}
  end

  # ---- UniformRandom ----

  test "UniformRandom picks alive members only, each of them" do
    members = q([{1, :alive}, {2, :dead}, {3, :alive}, {4, :shutting_down}])

    picked =
      for _ <- 1..200, into: MapSet.new() do
        {:ok, m} = UniformRandom.choose_node(random_spec(), members)
        m.name
      end

    assert picked == MapSet.new([{:sup1, :"node1@127.0.0.1"}, {:sup1, :"node3@127.0.0.1"}])
    {:ok, batch} = UniformRandom.choose_nodes(List.duplicate(%{}, 50), members)
    assert length(batch) == 50 and Enum.all?(batch, &(&1.status == :alive))
    assert UniformRandom.choose_node(%{}, q([{1, :dead}])) == {:error, :no_alive_nodes}
    assert UniformRandom.choose_nodes([%{}], []) == {:error, :no_alive_nodes}
    assert UniformRandom.has_quorum?([])
  end

  # ---- Rendezvous ----

  test "Rendezvous: alive only, batch equals per-item, member order does not matter" do
    for n <- [0, 1, 3, 10, 40], _ <- 1..3 do
      members = random_members(n)
      specs = for _ <- 1..100, do: random_spec()
      single = Enum.map(specs, &Rendezvous.choose_node(&1, members))

      if Enum.any?(members, &(&1.status == :alive)) do
        assert {:ok, batch} = Rendezvous.choose_nodes(specs, members)
        assert Enum.map(batch, &{:ok, &1}) == single
        assert Enum.all?(batch, &(&1.status == :alive))
        shuffled = Enum.map(specs, &Rendezvous.choose_node(&1, Enum.shuffle(members)))
        assert shuffled == single
      else
        assert Enum.all?(single, &(&1 == {:error, :no_alive_nodes}))
        assert Rendezvous.choose_nodes(specs, members) == {:error, :no_alive_nodes}
      end
    end
  end

  test "Rendezvous: even load, and joins and leaves move only what they must" do
    specs = for i <- 1..20_000, do: %{id: i, start: {Worker, :start_link, [i]}}
    ten = alive_members(10)
    eleven = ten ++ [member(1, 11, :alive)]
    {:ok, on10} = Rendezvous.choose_nodes(specs, ten)
    {:ok, on11} = Rendezvous.choose_nodes(specs, eleven)

    # 2000 per member expected, binomial sd about 42: +-10% is more than 4 sd
    for {_, count} <- Enum.frequencies_by(on10, & &1.name) do
      assert_in_delta count, 2000, 200
    end

    moved = Enum.zip(on10, on11) |> Enum.reject(fn {a, b} -> a == b end)
    assert Enum.all?(moved, fn {_, b} -> b.name == {:sup1, :"node11@127.0.0.1"} end)
    # ideal 1/11 = 1818
    assert_in_delta length(moved), 1818, 250

    # removing node 4 of 11 moves exactly the specs it had
    gone = {:sup1, :"node4@127.0.0.1"}
    {:ok, without} = Rendezvous.choose_nodes(specs, Enum.reject(eleven, &(&1.name == gone)))

    for {a, b} <- Enum.zip(on11, without) do
      if a.name == gone, do: assert(b.name != gone), else: assert(a == b)
    end
  end

  test "Uniform: 10 -> 11 members moves about 1/11 of specs, all to the new member" do
    specs = for i <- 1..20_000, do: %{id: i, start: {Worker, :start_link, [i]}}
    ten = alive_members(10)
    {:ok, on10} = Uniform.choose_nodes(specs, ten)
    {:ok, on11} = Uniform.choose_nodes(specs, ten ++ [member(1, 11, :alive)])
    moved = Enum.zip(on10, on11) |> Enum.reject(fn {a, b} -> a == b end)
    assert Enum.all?(moved, fn {_, b} -> b.name == {:sup1, :"node11@127.0.0.1"} end)
    assert length(moved) > 0.05 * 20_000 and length(moved) < 0.14 * 20_000
  end

  # ---- the behaviour helper ----

  defmodule OnlyOne do
    @behaviour Drove.DistributionStrategy
    def choose_node(%{fail: true}, _), do: {:error, :nope}
    def choose_node(_spec, [m | _]), do: {:ok, m}
    def has_quorum?(_), do: true
  end

  test "DistributionStrategy.choose_nodes/3 uses choose_nodes/2 when exported, else maps" do
    members = alive_members(3)
    specs = for _ <- 1..20, do: random_spec()

    assert DistributionStrategy.choose_nodes(Uniform, specs, members) ==
             Uniform.choose_nodes(specs, members)

    assert DistributionStrategy.choose_nodes(OnlyOne, specs, members) ==
             {:ok, List.duplicate(hd(members), 20)}

    assert DistributionStrategy.choose_nodes(OnlyOne, specs ++ [%{fail: true}], members) ==
             {:error, :nope}
  end
end
