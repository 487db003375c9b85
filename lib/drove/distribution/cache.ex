defmodule Drove.Distribution.Cache do
  @moduledoc false
  # A small most-recently-used cache in the calling process's dictionary, for what a strategy
  # derives from a member list (a ring resource, member binaries). Keys are compared exactly
  # (=:=). At most @max entries per process; the least recently used one is dropped.
  # Placement runs in the supervisor process, whose member list changes rarely, so this is
  # almost always a hit, and nothing global (persistent_term) has to be updated on a change.

  @key :"$drove_placement_cache"
  @max 8

  @spec fetch(term(), (() -> value)) :: value when value: term()
  def fetch(key, build) do
    entries = Process.get(@key, [])

    case entries do
      [{^key, value} | _] ->
        value

      _ ->
        case List.keytake(entries, key, 0) do
          {{^key, value}, rest} ->
            Process.put(@key, [{key, value} | rest])
            value

          nil ->
            value = build.()
            Process.put(@key, [{key, value} | Enum.take(entries, @max - 1)])
            value
        end
    end
  end

  @spec size() :: non_neg_integer()
  def size, do: length(Process.get(@key, []))

  @spec clear() :: :ok
  def clear do
    Process.delete(@key)
    :ok
  end
end
