defmodule Drove.Options do
  @moduledoc false
  # Shared checks of keyword options: every public start function raises ArgumentError with
  # a sentence saying what is accepted.

  @doc "Raises unless `opts` is a keyword list whose keys are all in `known`."
  @spec known!(term(), [atom()], String.t()) :: :ok
  def known!(opts, known, what) when is_list(opts) do
    Enum.each(opts, fn
      {k, _} when is_atom(k) ->
        unless k in known do
          raise ArgumentError,
                "unknown #{what} option #{inspect(k)}; accepted: #{inspect(known)}"
        end

      other ->
        raise ArgumentError,
              "#{what} options are a keyword list, got the element #{inspect(other)}"
    end)
  end

  def known!(other, _known, what) do
    raise ArgumentError, "#{what} options are a keyword list, got: #{inspect(other)}"
  end
end
