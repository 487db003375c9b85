defmodule Drove.Distribution.Rendezvous do
  @moduledoc """
  Rendezvous (highest random weight) hashing over the `:alive` members, in C with XXH3.

  A spec's key is the canonical bytes of the spec without its `:id`
  (`Drove.Native.key(Map.drop(child_spec, [:id]))`, equal on every node). Each member's seed
  is XXH3 of `Drove.Native.key(name)`; the member with the highest
  `mix64(XXH3(key) bxor seed)` wins, `mix64` being the splitmix64 finaliser (ties, about
  n²/2⁶⁴, go to the smaller seed). See `c_src/ring.h`.

  Compared with `Drove.Distribution.Uniform`: the load is even without virtual nodes (a
  member's share is binomial, not a sum of arc lengths), the choice does not depend on the
  order of members, and when a member joins only the specs it wins move (to it); when one
  leaves only its own move. A call is O(members). It does not place like Horde.

  No alive member: `{:error, :no_alive_nodes}`. `has_quorum?/1` is always true.
  """

  @behaviour Drove.DistributionStrategy

  alias Drove.Distribution.Cache
  alias Drove.DynamicSupervisor.Member
  alias Drove.Native

  @doc "The alive member with the highest score for `child_spec`."
  @impl true
  @spec choose_node(map(), [Member.t()]) :: {:ok, Member.t()} | {:error, :no_alive_nodes}
  def choose_node(child_spec, members) when is_map(child_spec) and is_list(members) do
    with {:ok, bins, by_index} <- candidates(members) do
      {:ok, elem(by_index, Native.rendezvous_owner(bins, key(child_spec)))}
    end
  end

  @doc "`choose_node/2` for many specs in one call to C: the same members, in spec order."
  @impl true
  @spec choose_nodes([map()], [Member.t()]) :: {:ok, [Member.t()]} | {:error, :no_alive_nodes}
  def choose_nodes([], members) when is_list(members), do: {:ok, []}

  def choose_nodes(child_specs, members) when is_list(child_specs) and is_list(members) do
    with {:ok, bins, by_index} <- candidates(members) do
      owners = Native.rendezvous_owners(bins, Enum.map(child_specs, &key/1))
      {:ok, Enum.map(owners, &elem(by_index, &1))}
    end
  end

  @doc "Always true."
  @impl true
  @spec has_quorum?([Member.t()]) :: true
  def has_quorum?(_members), do: true

  @doc "The bytes a spec is hashed on: `Drove.Native.key(Map.drop(child_spec, [:id]))`."
  @spec key(map()) :: binary()
  def key(child_spec) when is_map(child_spec), do: Native.key(Map.drop(child_spec, [:id]))

  defp candidates(members), do: Cache.fetch({__MODULE__, members}, fn -> build(members) end)

  defp build(members) do
    with {:ok, names, by_index} <- Drove.DistributionStrategy.alive_by_name(members) do
      {:ok, Enum.map(names, &Native.key/1), by_index}
    end
  end
end
