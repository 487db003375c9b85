defmodule Drove.DistributionStrategy do
  @moduledoc """
  Where a distributed dynamic supervisor starts a child, and whether it may start children at
  all. The same contract as `Horde.DistributionStrategy`.

  Strategies receive the members as `Drove.DynamicSupervisor.Member` structs
  (`%Member{name: {supervisor_name, node}, status: status}`) and the child spec as a map
  (with its `:id`; strategies that hash the spec leave `:id` out, as Horde does).

  Built in:

    * `Drove.Distribution.Uniform` - Horde's `UniformDistribution`: the same hash ring, so the
      same placement as Horde for the same spec and members (the default);
    * `Drove.Distribution.UniformQuorum` - the same, but only while a quorum of members is
      alive (Horde's `UniformQuorumDistribution`);
    * `Drove.Distribution.UniformRandom` - a random alive member;
    * `Drove.Distribution.Rendezvous` - rendezvous (highest random weight) hashing with XXH3:
      even load without virtual nodes, and minimal movement when members come and go.

  ## Optional batch callback

  `c:choose_nodes/2` places many specs over the same members in one call (after a membership
  change, say). A supervisor calls it when the strategy exports it, and otherwise calls
  `c:choose_node/2` once per spec; `choose_nodes/3` below does exactly that. It must return the
  same members, in spec order, as calling `c:choose_node/2` on each spec would (for
  deterministic strategies), or the first error.
  """

  alias Drove.DynamicSupervisor.Member

  @doc "The member that should run the child described by `child_spec`."
  @callback choose_node(child_spec :: map(), members :: [Member.t()]) ::
              {:ok, Member.t()} | {:error, term()}

  @doc "Whether this member list allows starting children at all."
  @callback has_quorum?(members :: [Member.t()]) :: boolean()

  @doc "`c:choose_node/2` for many specs at once, in spec order (optional)."
  @callback choose_nodes(child_specs :: [map()], members :: [Member.t()]) ::
              {:ok, [Member.t()]} | {:error, term()}

  @doc """
  Whether `c:choose_node/2` depends only on its arguments (optional; default false). A
  supervisor seeds `:rand` with the child id before each takeover decision of a strategy
  that is not deterministic, so that every node draws the same member.
  """
  @callback deterministic?() :: boolean()

  @optional_callbacks choose_nodes: 2, deterministic?: 0

  @doc """
  Places `child_specs` with `strategy`: its `c:choose_nodes/2` when exported, else
  `c:choose_node/2` for each spec, stopping at the first error.
  """
  @spec choose_nodes(module(), [map()], [Member.t()]) :: {:ok, [Member.t()]} | {:error, term()}
  def choose_nodes(strategy, child_specs, members) when is_atom(strategy) do
    if Code.ensure_loaded?(strategy) and function_exported?(strategy, :choose_nodes, 2) do
      strategy.choose_nodes(child_specs, members)
    else
      Enum.reduce_while(child_specs, {:ok, []}, fn spec, {:ok, acc} ->
        case strategy.choose_node(spec, members) do
          {:ok, member} -> {:cont, {:ok, [member | acc]}}
          {:error, _} = error -> {:halt, error}
        end
      end)
      |> case do
        {:ok, chosen} -> {:ok, Enum.reverse(chosen)}
        error -> error
      end
    end
  end

  @doc false
  # The alive members keyed by name, in Horde's order (`Map.keys/1` of a map keyed by name,
  # which also drops duplicates): `{:ok, names, members_by_index}`, or
  # `{:error, :no_alive_nodes}`. The ring and rendezvous strategies index their C structures
  # by this order.
  @spec alive_by_name([Member.t()]) ::
          {:ok, [term()], tuple()} | {:error, :no_alive_nodes}
  def alive_by_name(members) do
    alive = for %{status: :alive, name: name} = m <- members, into: %{}, do: {name, m}

    if map_size(alive) == 0 do
      {:error, :no_alive_nodes}
    else
      names = Map.keys(alive)
      {:ok, names, names |> Enum.map(&Map.fetch!(alive, &1)) |> List.to_tuple()}
    end
  end
end
