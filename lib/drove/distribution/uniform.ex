defmodule Drove.Distribution.Uniform do
  @moduledoc """
  Horde's `Horde.UniformDistribution`, placement for placement: the same member for the same
  child spec and the same members.

    * The spec's identifier is `:erlang.phash2(Map.drop(child_spec, [:id]))`, and its position
      on the ring `:erlang.phash2(identifier, 4294967295)` (see `hash/1`).
    * Only `:alive` members are candidates, keyed by name (duplicates collapse), and they are
      put on the ring in `Map.keys/1` order of a map keyed by name.
    * Each member gets 128 points `:erlang.phash2({name, i}, 4294967295)`, `i` in 1..128; on
      equal points the member put on the ring first keeps it (libring's gb_tree rule).
    * The owner of a spec is the member of the first point >= its hash, or of the smallest
      point (wrap-around).
    * No alive member: `{:error, :no_alive_nodes}`. `has_quorum?/1` is always true.

  Unlike Horde, the ring is not rebuilt on every call: it is built once per member list (in
  C, `Drove.Native.ring_new/1`) and kept in a small per-process cache, so a call costs a
  lookup, O(log points).
  """

  @behaviour Drove.DistributionStrategy

  alias Drove.Distribution.Cache
  alias Drove.DynamicSupervisor.Member
  alias Drove.Native

  @hash_range 4_294_967_295
  @points 128

  @doc "Chooses the alive member owning `child_spec` on the ring (see the module doc)."
  @impl true
  @spec choose_node(map(), [Member.t()]) :: {:ok, Member.t()} | {:error, :no_alive_nodes}
  def choose_node(child_spec, members) when is_map(child_spec) and is_list(members) do
    with {:ok, ring, by_index} <- ring(members) do
      {:ok, elem(by_index, Native.ring_owner(ring, hash(child_spec)))}
    end
  end

  @doc "`choose_node/2` for many specs in one call to C: the same members, in spec order."
  @impl true
  @spec choose_nodes([map()], [Member.t()]) :: {:ok, [Member.t()]} | {:error, :no_alive_nodes}
  def choose_nodes([], members) when is_list(members), do: {:ok, []}

  def choose_nodes(child_specs, members) when is_list(child_specs) and is_list(members) do
    with {:ok, ring, by_index} <- ring(members) do
      owners = Native.ring_owners(ring, Enum.map(child_specs, &hash/1))
      {:ok, Enum.map(owners, &elem(by_index, &1))}
    end
  end

  @doc "Always true."
  @impl true
  @spec has_quorum?([Member.t()]) :: true
  def has_quorum?(_members), do: true

  @doc """
  The ring position of a child spec, as Horde computes it:
  `:erlang.phash2(:erlang.phash2(Map.drop(child_spec, [:id])), 4294967295)`.
  """
  @spec hash(map()) :: non_neg_integer()
  def hash(child_spec) when is_map(child_spec),
    do: :erlang.phash2(:erlang.phash2(Map.drop(child_spec, [:id])), @hash_range)

  @doc "The ring points of a member name: `:erlang.phash2({name, i}, 4294967295)`, i in 1..128."
  @spec points(term()) :: [non_neg_integer()]
  def points(name), do: for(i <- 1..@points, do: :erlang.phash2({name, i}, @hash_range))

  # {:ok, ring, members by ring index} | {:error, :no_alive_nodes}, cached per member list.
  defp ring(members), do: Cache.fetch({__MODULE__, members}, fn -> build(members) end)

  defp build(members) do
    with {:ok, names, by_index} <- Drove.DistributionStrategy.alive_by_name(members) do
      {:ok, Native.ring_new(Enum.map(names, &points/1)), by_index}
    end
  end
end
