defmodule Horde.StrategyAdapter do
  @moduledoc false
  # Runs a Drove strategy on members that are any struct or map with :name and :status (a
  # Horde.DynamicSupervisor.Member given by a user or by the supervisor, a
  # Drove.DynamicSupervisor.Member, ...) and returns the member it was given, not a copy.

  @spec choose_node(module(), term(), [map()]) :: {:ok, map()} | {:error, term()}
  def choose_node(drove_strategy, child_spec, members) when is_list(members) do
    case drove_strategy.choose_node(child_spec, to_drove(members)) do
      {:ok, %{name: name, status: status}} -> {:ok, original(members, name, status)}
      {:error, _reason} = error -> error
    end
  end

  @spec choose_nodes(module(), [term()], [map()]) :: {:ok, [map()]} | {:error, term()}
  def choose_nodes(drove_strategy, child_specs, members) when is_list(members) do
    case drove_strategy.choose_nodes(child_specs, to_drove(members)) do
      {:ok, chosen} -> {:ok, Enum.map(chosen, &original(members, &1.name, &1.status))}
      {:error, _reason} = error -> error
    end
  end

  @spec has_quorum?(module(), [map()]) :: boolean()
  def has_quorum?(drove_strategy, members) when is_list(members),
    do: drove_strategy.has_quorum?(to_drove(members))

  defp to_drove(members) do
    for %{name: name, status: status} <- members,
        do: struct!(Drove.DynamicSupervisor.Member, name: name, status: status)
  end

  # Horde keys members by name, the last one given winning; the same here.
  defp original(members, name, status) do
    members
    |> Enum.reverse()
    |> Enum.find(&match?(%{name: ^name, status: ^status}, &1))
    |> Kernel.||(Enum.find(Enum.reverse(members), &match?(%{name: ^name}, &1)))
  end
end
