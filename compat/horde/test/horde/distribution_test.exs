defmodule Horde.DistributionTest do
  # The three strategies, from Horde's documented placement (horde-semantics.md section 5).
  use ExUnit.Case, async: true

  alias Horde.DynamicSupervisor.Member

  # Horde 0.10's UniformDistribution, written from its description: a ring of 128 points per
  # :alive member (phash2 of {name, i} over 2^32-1, the first inserted point winning a
  # collision, members in map-key order), looked up with phash2 of phash2(spec without :id).
  defp horde_choice(spec, members) do
    alive = for %{status: :alive} = m <- members, into: %{}, do: {m.name, m}

    if alive == %{} do
      {:error, :no_alive_nodes}
    else
      ring =
        for(
          name <- Map.keys(alive),
          i <- 1..128,
          do: {:erlang.phash2({name, i}, 4_294_967_295), name}
        )
        |> Enum.reduce(%{}, fn {point, name}, acc -> Map.put_new(acc, point, name) end)
        |> Enum.sort()

      h = spec |> Map.drop([:id]) |> :erlang.phash2() |> :erlang.phash2(4_294_967_295)
      {_point, owner} = Enum.find(ring, hd(ring), fn {point, _} -> point >= h end)
      {:ok, Map.fetch!(alive, owner)}
    end
  end

  defp members(nodes, status \\ :alive),
    do: for(n <- nodes, do: %Member{name: {MySup, n}, status: status})

  defp spec(i), do: %{id: i, start: {Horde.Test.Worker, :start_link, [[tag: i]]}}

  test "UniformDistribution places exactly as Horde does" do
    for count <- [1, 2, 3, 5, 10] do
      ms = members(for i <- 1..count, do: :"node#{i}@host")

      for i <- 1..300 do
        assert Horde.UniformDistribution.choose_node(spec(i), ms) == horde_choice(spec(i), ms),
               "#{count} members, spec #{i}"
      end
    end

    ms = members([:a@h, :b@h, :c@h])
    specs = for i <- 1..50, do: spec(i)

    assert Horde.UniformDistribution.choose_nodes(specs, ms) ==
             {:ok, for(s <- specs, do: elem(horde_choice(s, ms), 1))}

    assert Horde.UniformDistribution.has_quorum?(members([:a@h], :dead))
  end

  test "only :alive members are placement targets; none gives :no_alive_nodes" do
    ms =
      members([:a@h], :dead) ++
        members([:b@h], :shutting_down) ++ members([:c@h], :uninitialized) ++ members([:d@h])

    for i <- 1..50 do
      assert {:ok, %Member{name: {MySup, :d@h}}} =
               Horde.UniformDistribution.choose_node(spec(i), ms)

      assert {:ok, %Member{name: {MySup, :d@h}}} =
               Horde.UniformRandomDistribution.choose_node(spec(i), ms)
    end

    dead = members([:a@h, :b@h], :dead)
    assert Horde.UniformDistribution.choose_node(spec(1), dead) == {:error, :no_alive_nodes}
    assert Horde.UniformRandomDistribution.choose_node(spec(1), dead) == {:error, :no_alive_nodes}
    assert Horde.UniformDistribution.choose_node(spec(1), []) == {:error, :no_alive_nodes}
  end

  test "strategies accept any map with :name and :status and return the member given" do
    ms = for n <- [:a@h, :b@h, :c@h], do: %{name: {MySup, n}, status: :alive, extra: n}

    for i <- 1..30 do
      {:ok, chosen} = Horde.UniformDistribution.choose_node(spec(i), ms)
      assert chosen in ms
      {:ok, chosen} = Horde.UniformRandomDistribution.choose_node(spec(i), ms)
      assert chosen in ms
      {:ok, chosen} = Horde.UniformQuorumDistribution.choose_node(spec(i), ms)
      assert chosen in ms
    end
  end

  test "UniformRandomDistribution spreads over the alive members" do
    ms = members([:a@h, :b@h, :c@h])

    chosen =
      for i <- 1..200, into: MapSet.new() do
        {:ok, m} = Horde.UniformRandomDistribution.choose_node(spec(i), ms)
        m.name
      end

    assert MapSet.size(chosen) == 3
    assert Horde.UniformRandomDistribution.has_quorum?([])
  end

  test "UniformQuorumDistribution: quorum is a majority of the members not shutting down" do
    q = &Horde.UniformQuorumDistribution.has_quorum?/1
    refute q.([])
    assert q.(members([:a@h, :b@h, :c@h]))
    assert q.(members([:a@h, :b@h]) ++ members([:c@h], :dead))
    refute q.(members([:a@h]) ++ members([:b@h, :c@h], :dead))
    # an even count leaves out the smallest member by name
    refute q.(members([:a@h]) ++ members([:b@h], :dead))
    assert q.(members([:a@h], :dead) ++ members([:b@h]))
    # :shutting_down members do not count
    assert q.(members([:a@h]) ++ members([:b@h, :c@h], :shutting_down))

    alone = members([:a@h]) ++ members([:b@h, :c@h], :dead)

    assert Horde.UniformQuorumDistribution.choose_node(spec(1), alone) ==
             {:error, :quorum_not_met}

    ms = members([:a@h, :b@h, :c@h])

    for i <- 1..50 do
      assert Horde.UniformQuorumDistribution.choose_node(spec(i), ms) == horde_choice(spec(i), ms)
    end
  end
end
